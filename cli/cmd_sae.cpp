// lumen sae train | eval
#include <nlohmann/json.hpp>

#include "common.h"
#include "lumen/sae.h"

namespace lumen_cli {
namespace {

struct SaeTrainArgs {
  std::string hook = "blocks.0.hook_resid_post";
  std::string arch = "topk";
  int64_t k = 8;
  int64_t d_sae = 512;
  int64_t tokens = 2000000;
  std::string corpus, text_field = "text", out;
  uint64_t seed = 0;
  bool resume = false;
  int64_t checkpoint_every = 0;
  double lr = 4e-4;
  double l1 = 1.0;
  double aux_k_coeff = 1.0 / 32;
  int64_t batch = 4096;
  int64_t buffer = 65536;
  int64_t ctx_len = 128;
  int64_t model_batch = 16;
  int64_t log_every = 50;
};

int cmd_sae_train(const ModelArgs& ma, const SaeTrainArgs& a) {
  auto model = ma.load(true);
  lumen::TrainOptions o;
  o.sae.arch = lumen::parse_sae_arch(a.arch, "--arch");
  o.sae.k = a.k;
  o.sae.d_sae = a.d_sae;
  o.sae.hook_name = a.hook;
  o.total_tokens = a.tokens;
  o.lr = a.lr;
  o.l1_coeff = a.l1;
  o.aux_k_coeff = a.aux_k_coeff;
  o.seed = a.seed;
  o.out_dir = a.out;
  o.resume = a.resume;
  o.checkpoint_every = a.checkpoint_every;
  o.log_every = a.log_every;
  o.data.corpus = a.corpus;
  o.data.text_field = a.text_field;
  o.data.batch_tokens = a.batch;
  o.data.buffer_tokens = a.buffer;
  o.data.ctx_len = a.ctx_len;
  o.data.model_batch = a.model_batch;
  auto r = lumen::train_sae(model, o);
  std::printf("trained %s SAE at %s: %lld steps, %lld tokens, FVU %.4f, L0 %.1f, dead %.1f%% -> %s\n",
              lumen::to_string(o.sae.arch), a.hook.c_str(), static_cast<long long>(r.steps), static_cast<long long>(r.tokens),
              r.final_fvu, r.final_l0, 100 * r.dead_fraction, a.out.c_str());
  return 0;
}

struct SaeEvalArgs {
  std::string sae, hook, corpus, text_field = "text";
  int64_t tokens = 100000;
  int64_t ctx_len = 128;
  int64_t batch = 16;
  bool json = false;
};

int cmd_sae_eval(const ModelArgs& ma, const SaeEvalArgs& a) {
  auto model = ma.load(true);
  auto sae = lumen::load_sae(a.sae, model.device(), a.hook);
  lumen::EvalOptions o;
  o.corpus = a.corpus;
  o.text_field = a.text_field;
  o.tokens = a.tokens;
  o.ctx_len = a.ctx_len;
  o.batch = a.batch;
  auto r = lumen::evaluate_sae(model, sae, o);
  if (a.json) {
    nlohmann::json j;
    j["sae"] = a.sae;
    j["hook"] = sae.config().hook_name;
    j["architecture"] = lumen::to_string(sae.config().arch);
    j["d_sae"] = sae.config().d_sae;
    j["tokens"] = r.tokens;
    j["l0"] = r.l0;
    j["mse"] = r.mse;
    j["fvu"] = r.fvu;
    j["ce_loss_clean"] = r.ce_loss_clean;
    j["ce_loss_spliced"] = r.ce_loss_spliced;
    j["ce_loss_ablated"] = r.ce_loss_ablated;
    j["ce_loss_recovered"] = r.ce_loss_recovered;
    j["dead_fraction"] = r.dead_fraction;
    j["dense_fraction"] = r.dense_fraction;
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::printf("SAE %s at %s (%s, d_sae %lld), %lld tokens\n", a.sae.c_str(), sae.config().hook_name.c_str(),
              lumen::to_string(sae.config().arch), static_cast<long long>(sae.config().d_sae), static_cast<long long>(r.tokens));
  std::printf("  L0                 %10.3f\n", r.l0);
  std::printf("  MSE                %10.5f\n", r.mse);
  std::printf("  FVU                %10.4f\n", r.fvu);
  std::printf("  CE loss clean      %10.4f\n", r.ce_loss_clean);
  std::printf("  CE loss spliced    %10.4f\n", r.ce_loss_spliced);
  std::printf("  CE loss ablated    %10.4f\n", r.ce_loss_ablated);
  std::printf("  CE loss recovered  %9.2f%%\n", 100 * r.ce_loss_recovered);
  std::printf("  dead latents       %9.2f%%\n", 100 * r.dead_fraction);
  std::printf("  dense latents      %9.2f%%\n", 100 * r.dense_fraction);
  return 0;
}

}  // namespace

void add_sae_commands(CLI::App& app, int& rc) {
  auto* sae = app.add_subcommand("sae", "sparse autoencoders: train and evaluate");
  sae->require_subcommand(1);

  auto tma = std::make_shared<ModelArgs>();
  auto ta = std::make_shared<SaeTrainArgs>();
  auto* train = sae->add_subcommand("train", "train an SAE on a hook point from a text corpus (writes a SAELens folder)");
  tma->add(train);
  train->add_option("--hook", ta->hook, "hook point, e.g. blocks.2.hook_resid_post")->capture_default_str();
  train->add_option("--arch", ta->arch, "relu, topk or batchtopk")->capture_default_str();
  train->add_option("--k", ta->k, "active latents (topk, batchtopk)")->capture_default_str();
  train->add_option("--d-sae", ta->d_sae, "latents")->capture_default_str();
  train->add_option("--tokens", ta->tokens, "training tokens")->capture_default_str();
  train->add_option("--corpus", ta->corpus, "plain text (a document per line) or .jsonl")->required();
  train->add_option("--text-field", ta->text_field, "JSONL field holding the text")->capture_default_str();
  train->add_option("--out", ta->out, "output folder (SAELens format; checkpoints/ inside)")->required();
  train->add_option("--seed", ta->seed, "seed for initialisation and data order")->capture_default_str();
  train->add_flag("--resume", ta->resume, "continue from OUT/checkpoints/state.safetensors");
  train->add_option("--checkpoint-every", ta->checkpoint_every, "steps between checkpoints (0: at the end)")->capture_default_str();
  train->add_option("--lr", ta->lr, "Adam learning rate")->capture_default_str();
  train->add_option("--l1", ta->l1, "L1 coefficient (relu)")->capture_default_str();
  train->add_option("--aux-k-coeff", ta->aux_k_coeff, "AuxK loss weight (topk, batchtopk)")->capture_default_str();
  train->add_option("--batch", ta->batch, "activations per training step")->capture_default_str();
  train->add_option("--buffer", ta->buffer, "shuffle buffer size (activations)")->capture_default_str();
  train->add_option("--ctx-len", ta->ctx_len, "context window (tokens)")->capture_default_str();
  train->add_option("--model-batch", ta->model_batch, "windows per model forward")->capture_default_str();
  train->add_option("--log-every", ta->log_every, "steps between progress lines")->capture_default_str();
  train->callback([&rc, tma, ta] { rc = cmd_sae_train(*tma, *ta); });

  auto ema = std::make_shared<ModelArgs>();
  auto ea = std::make_shared<SaeEvalArgs>();
  auto* eval = sae->add_subcommand("eval", "L0, MSE, FVU, CE loss recovered, dead/dense latents on held-out text");
  ema->add(eval);
  eval->add_option("--sae", ea->sae, "SAELens folder or Gemma Scope params.npz")->required();
  eval->add_option("--hook", ea->hook, "hook point (needed for params.npz; overrides cfg.json)");
  eval->add_option("--corpus", ea->corpus, "held-out text or .jsonl")->required();
  eval->add_option("--text-field", ea->text_field, "JSONL field holding the text")->capture_default_str();
  eval->add_option("--tokens", ea->tokens, "evaluation tokens at most")->capture_default_str();
  eval->add_option("--ctx-len", ea->ctx_len, "context window (tokens)")->capture_default_str();
  eval->add_option("--batch", ea->batch, "windows per forward")->capture_default_str();
  eval->add_flag("--json", ea->json, "print JSON");
  eval->callback([&rc, ema, ea] { rc = cmd_sae_eval(*ema, *ea); });
}

}  // namespace lumen_cli
