// lumen toy sva-transformer | sva: worked examples of agreement circuits with known answers (issue #6).
#include "common.h"
#include "lumen/circuits.h"
#include "lumen/circuits_organism.h"

namespace lumen_cli {
namespace {

// lumen toy sva: the 2-4-2 agreement network, its SAE and its circuit graph.
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

}  // namespace

void add_toy_commands(CLI::App& app, int& rc) {
  auto* toy = app.add_subcommand("toy", "small worked examples with known answers");
  toy->require_subcommand(1);
  add_toy_sva_command(*toy, rc);

  auto o = std::make_shared<lumen::OrganismOptions>();
  auto* sva = toy->add_subcommand("sva-transformer",
                                  "generate an agreement grammar, train a small llama on it, write an HF checkpoint");
  sva->add_option("--out", o->out_dir, "output folder (checkpoint, corpus.txt, sva_test.jsonl, organism.json)")->required();
  sva->add_option("--seed", o->seed, "seed for the grammar, the initial weights and the data order")->capture_default_str();
  sva->add_option("--layers", o->n_layers, "transformer blocks (2-4 recommended)")->capture_default_str();
  sva->add_option("--d-model", o->d_model, "residual width")->capture_default_str();
  sva->add_option("--heads", o->n_heads, "attention heads")->capture_default_str();
  sva->add_option("--d-mlp", o->d_mlp, "MLP hidden width")->capture_default_str();
  sva->add_option("--steps", o->steps, "training steps")->capture_default_str();
  sva->add_option("--batch", o->batch, "windows per step")->capture_default_str();
  sva->add_option("--seq-len", o->seq_len, "tokens per window")->capture_default_str();
  sva->add_option("--lr", o->lr, "AdamW peak learning rate")->capture_default_str();
  sva->add_option("--sentences", o->grammar.train_sentences, "training sentences")->capture_default_str();
  sva->add_option("--test-pairs", o->grammar.test_pairs, "held-out pairs per construction")->capture_default_str();
  sva->add_option("--checkpoint-every", o->checkpoint_every, "steps between training-state checkpoints")->capture_default_str();
  sva->add_option("--log-every", o->log_every, "steps between progress lines")->capture_default_str();
  sva->add_option("--stop-after", o->stop_after_steps, "stop (checkpointed) after this many steps; rerun to resume");
  sva->callback([&rc, o] {
    auto r = lumen::train_sva_organism(*o);
    if (!r.finished) {
      std::printf("stopped at step %lld; rerun the same command to resume\n", static_cast<long long>(r.steps));
      return;
    }
    std::printf("%s: %lld parameters (without the tied embedding), %lld steps in %.1f s, final loss %.4f\n",
                o->out_dir.c_str(), static_cast<long long>(r.n_parameters), static_cast<long long>(r.steps),
                r.train_seconds, r.final_loss);
    for (const auto& c : lumen::sva_constructions())
      std::printf("  %-11s %6.2f%%\n", c.c_str(), 100.0 * r.accuracy[c]);
    std::printf("  %-11s %6.2f%%\n", "all", 100.0 * r.accuracy["all"]);
    if (r.min_accuracy < 0.99) std::printf("warning: some construction is below 99%%; train longer (--steps)\n");
  });
}

}  // namespace lumen_cli
