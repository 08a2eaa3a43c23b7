// lumen toy sva: the 2-4-2 agreement network, its SAE and its circuit graph.
#include "common.h"
#include "lumen/circuits.h"

namespace lumen_cli {

void add_toy_sva_command(CLI::App& toy, int& rc) {
  struct Args {
    uint64_t seed = 0;
    std::string out = "toy_sva";
  };
  auto a = std::make_shared<Args>();
  auto* c = toy.add_subcommand("sva", "train a 2-4-2 agreement network and an SAE on its hidden layer; draw its circuit");
  c->add_option("--seed", a->seed, "seed for data, network and SAE")->capture_default_str();
  c->add_option("--out", a->out, "output folder (graph.json, circuit.html, ...)")->capture_default_str();
  c->callback([&rc, a] {
    lumen::ToyOptions o;
    o.seed = a->seed;
    const auto r = lumen::run_toy_sva(o);
    std::printf("network accuracy %.3f, SAE FVU %.4f\n", r.accuracy, r.sae_fvu);
    std::printf("m = logit(are) - logit(is): clean %.3f, patch %.3f, all latents ablated %.3f\n", r.graph.m_clean,
                r.graph.m_patch, r.graph.m_empty);
    for (const auto& n : r.graph.nodes)
      std::printf("  %-14s %-8s effect %+8.4f  act %8.4f  %s\n", n.id.c_str(), n.kind.c_str(), n.effect, n.activation, n.label.c_str());
    std::printf("top latent f%lld: r(subject) = %.3f, r(distractor) = %.3f\n", (long long)r.top_feature, r.top_subject_corr,
                r.top_distractor_corr);
    for (const auto& p : r.graph.curve)
      std::printf("  %lld latent nodes: faithfulness %.3f, completeness %.3f\n", (long long)p.n_nodes, p.faithfulness, p.completeness);
    lumen::write_circuit(r.graph, a->out, "toy agreement circuit (2-4-2 network + SAE)");
    std::printf("wrote %s/circuit.html (%zu nodes, %zu links)\n", a->out.c_str(), r.graph.nodes.size(), r.graph.links.size());
    rc = 0;
  });
}

}  // namespace lumen_cli
