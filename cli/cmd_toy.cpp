// lumen toy sva-transformer: the agreement model organism (issue #6).
#include "common.h"
#include "lumen/circuits_organism.h"

namespace lumen_cli {

void add_toy_commands(CLI::App& app, int& rc) {
  auto* toy = app.add_subcommand("toy", "small worked examples with known answers");
  toy->require_subcommand(1);

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
