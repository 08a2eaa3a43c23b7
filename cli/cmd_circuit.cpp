// lumen circuit: sparse feature circuits for subject-verb agreement.
#include "common.h"
#include "lumen/circuits.h"
#include "lumen/files.h"
#include "lumen/sae.h"

namespace lumen_cli {
namespace {

struct CircuitArgs {
  std::vector<std::string> saes;
  std::string data, templ, construction = "simple", method = "ig", out = "circuit_out", store;
  int64_t n = 128, limit = -1, steps = 10, batch = 16, exact = 32, max_edge_nodes = 64;
  double node_threshold = 0.1, edge_threshold = 0.01;
  bool keep_positions = false;
  uint64_t seed = 0;
};

void print_result(const lumen::CircuitResult& r) {
  std::printf("%lld pairs, accuracy %.3f, m(M) %.3f on clean, %.3f on patch, m(empty) %.3f\n", (long long)r.examples,
              r.accuracy, r.m_clean, r.m_patch, r.m_empty);
  std::printf("%s: %lld candidate nodes; threshold %g -> %zu nodes, %zu links, faithfulness %.3f, completeness %.3f\n",
              r.method.c_str(), (long long)r.total_nodes, r.threshold, r.nodes.empty() ? 0 : r.nodes.size() - 1,
              r.links.size(), r.faithfulness, r.completeness);
  std::printf("linear estimate vs exact patching: r = %.3f over %lld nodes; %.1f s\n", r.exact_correlation,
              (long long)r.exact_checked, r.seconds);
  std::printf("%12s %8s %13s %13s\n", "threshold", "nodes", "faithfulness", "completeness");
  for (const auto& p : r.curve)
    std::printf("%12.4g %8lld %13.3f %13.3f\n", p.node_threshold, (long long)p.n_nodes, p.faithfulness, p.completeness);
  std::printf("top nodes:\n");
  for (size_t i = 0; i < r.top_nodes.size() && i < 10; ++i)
    std::printf("  %-32s effect %+8.4f  act %8.3f  %s\n", r.top_nodes[i].id.c_str(), r.top_nodes[i].effect,
                r.top_nodes[i].activation, r.top_nodes[i].label.c_str());
}

int cmd_circuit(const ModelArgs& ma, const CircuitArgs& a) {
  auto model = ma.load(true);
  lumen::require(a.data.empty() != a.templ.empty(), ErrorKind::Arg, "circuit: give exactly one of --data FILE or --template sva");
  lumen::require(a.templ.empty() || a.templ == "sva", ErrorKind::Arg, "--template " + a.templ + ": only 'sva' is known");
  std::vector<lumen::Sae> saes;
  for (const auto& s : a.saes) saes.push_back(lumen::load_sae(s, model.device()));
  const auto pairs = a.data.empty() ? lumen::sva_template_pairs(a.n, a.seed, a.construction, &model) : lumen::load_sva_jsonl(a.data, a.limit);
  const auto data = lumen::tokenize_sva(model, pairs);
  std::printf("%zu pairs, %zu kept (same length), %lld dropped\n", pairs.size(), data.examples.size(), (long long)data.dropped);
  lumen::CircuitOptions o;
  lumen::require(a.method == "ig" || a.method == "atp", ErrorKind::Arg, "--method " + a.method + ": expected ig or atp");
  o.method = a.method == "ig" ? lumen::AttributionMethod::IG : lumen::AttributionMethod::AtP;
  o.ig_steps = a.steps;
  o.keep_positions = a.keep_positions;
  o.node_threshold = a.node_threshold;
  o.edge_threshold = a.edge_threshold;
  o.batch = a.batch;
  o.exact_nodes = a.exact;
  o.max_edge_nodes = a.max_edge_nodes;
  o.seed = a.seed;
  auto r = lumen::find_circuit(model, saes, data, o);
  if (!a.store.empty()) lumen::label_circuit(r, a.store);
  print_result(r);
  const auto readout = lumen::number_readout(model, saes, data, r);
  if (!readout.empty() && readout[0].prompts > 0) {
    std::printf("what the top latents read, summed over the prefix (Pearson r over %lld prompts):\n",
                (long long)readout[0].prompts);
    std::printf("  %-32s %9s %11s %13s\n", "latent", "effect", "r(subject)", "r(distractor)");
    for (const auto& x : readout)
      std::printf("  %-32s %+9.4f %+11.3f %+13.3f\n", x.id.c_str(), x.effect, x.r_subject, x.r_distractor);
  }
  lumen::write_circuit(r, a.out, "agreement circuit: " + model.path());
  std::printf("wrote %s/{graph.json,faithfulness.json,circuit.dot,circuit.html,faithfulness.svg}\n", a.out.c_str());
  return 0;
}

}  // namespace

void demo_circuit(const lumen::Model& model, const std::vector<lumen::Sae>& saes, const std::string& store,
                  const std::string& out_dir) {
  if (saes.empty()) return;
  // One mid-depth SAE keeps the circuit compact; AtP keeps it to a few seconds.
  const lumen::Sae& sae = saes[saes.size() / 2];
  const auto data = lumen::tokenize_sva(model, lumen::sva_template_pairs(64, 0, "simple", &model));
  lumen::CircuitOptions o;
  o.method = lumen::AttributionMethod::AtP;
  o.node_threshold = 0.05;
  o.exact_nodes = 16;
  o.log = [](const std::string&) {};
  std::printf("\n-- feature circuit for agreement (%s, %zu template pairs, AtP)\n", sae.config().hook_name.c_str(),
              data.examples.size());
  auto r = lumen::find_circuit(model, {sae}, data, o);
  if (!store.empty() && lumen::file_exists(store)) lumen::label_circuit(r, store);
  print_result(r);
  lumen::write_circuit(r, out_dir, "agreement circuit at " + sae.config().hook_name);
  std::printf("circuit view: %s/circuit.html\n", out_dir.c_str());
}

void add_circuit_commands(CLI::App& app, int& rc) {
  auto ma = std::make_shared<ModelArgs>();
  auto a = std::make_shared<CircuitArgs>();
  auto* c = app.add_subcommand("circuit", "sparse feature circuit for subject-verb agreement (SAE latents + errors)");
  ma->add(c);
  c->add_option("--sae", a->saes, "SAE folder; repeat for several sites (one SAE gives a compact circuit)")->required();
  c->add_option("--data", a->data, "agreement pairs, JSONL (clean_prefix, patch_prefix, clean_answer, patch_answer)");
  c->add_option("--template", a->templ, "generate pairs instead: 'sva' (TinyStories words)");
  c->add_option("--construction", a->construction, "template: simple, pp or all")->capture_default_str();
  c->add_option("--n", a->n, "template pairs")->capture_default_str();
  c->add_option("--limit", a->limit, "read at most this many pairs from --data")->capture_default_str();
  c->add_option("--method", a->method, "ig or atp")->capture_default_str();
  c->add_option("--steps", a->steps, "integrated-gradient steps")->capture_default_str();
  c->add_option("--node-threshold", a->node_threshold, "|mean effect per pair| to enter the circuit")->capture_default_str();
  c->add_option("--edge-threshold", a->edge_threshold, "|mean edge weight per pair| to be drawn")->capture_default_str();
  c->add_flag("--keep-positions", a->keep_positions, "nodes per position (default: summed over positions)");
  c->add_option("--batch", a->batch, "pairs per forward pass")->capture_default_str();
  c->add_option("--exact", a->exact, "nodes to patch exactly to check the estimates (0: skip)")->capture_default_str();
  c->add_option("--max-edge-nodes", a->max_edge_nodes, "downstream nodes whose edges are computed")->capture_default_str();
  c->add_option("--store", a->store, "feature store (lumen features harvest) for node labels");
  c->add_option("--out", a->out, "output folder")->capture_default_str();
  c->add_option("--seed", a->seed, "template and sampling seed")->capture_default_str();
  c->callback([&rc, ma, a] { rc = cmd_circuit(*ma, *a); });
}

}  // namespace lumen_cli
