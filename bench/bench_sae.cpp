// bench_sae: the C++ half of `make bench`'s SAE and feature-harvest benchmarks (bench/run_sae.sh
// drives it and bench/baseline_sae.py, the PyTorch-eager side). It times, on stories260K:
//   update   one SAE training step exactly as train_sae runs it (src/sae/train_step.h), on real
//            activations that it also saves so the eager side trains on the same rows;
//   store    ActivationStore rows/s with and without stop_at_layer, against the bare forward pass;
//   harvest  harvest_features with every SAE given, on windows it saves for the eager side.
//
//   bench_sae export --model M --out DIR              HF copy of M (what the eager side loads)
//   bench_sae run --model M --corpus C --sae DIR... --work DIR --out FILE.json [--steps N] [--harvest-tokens N]
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "lumen/error.h"
#include "lumen/features.h"
#include "lumen/model.h"
#include "lumen/runtime.h"
#include "lumen/sae.h"
#include "lumen/tensors.h"
#include "sae/train_step.h"

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The update shapes; baseline_sae.py uses the same table (name, d_in, d_sae, k, batch rows).
struct UpdateShape {
  const char* name;
  int64_t d_in, d_sae, k, rows;
};
const UpdateShape kShapes[] = {
    {"stories260K L2, 512 latents, batch 1024", 64, 512, 16, 1024},
    {"stories260K L2, 512 latents, batch 4096", 64, 512, 16, 4096},
    {"d_in 512, 4096 latents, batch 4096 (synthetic rows)", 512, 4096, 32, 4096},
};
const char* kHook = "blocks.2.hook_resid_post";

// Times `steps` updates of a fresh TopK SAE on rows of `acts` (cycled), after 3 warm-up steps.
json time_update(const UpdateShape& sh, const at::Tensor& acts, int64_t steps) {
  lumen::SaeConfig cfg;
  cfg.arch = lumen::SaeArch::TopK;
  cfg.d_in = sh.d_in;
  cfg.d_sae = sh.d_sae;
  cfg.k = sh.k;
  cfg.hook_name = kHook;
  lumen::TrainOptions opt;
  opt.sae = cfg;
  opt.lr = 2e-3;
  lumen::SaeTrainState st;
  st.sae = lumen::Sae::init(cfg, 0);
  const int64_t n_batches = acts.size(0) / sh.rows;
  auto batch = [&](int64_t i) { return acts.narrow(0, (i % n_batches) * sh.rows, sh.rows); };
  {
    torch::NoGradGuard ng;  // train_sae's initialisation: scale to E||x|| = sqrt(D), b_dec at the mean
    auto x0 = batch(0);
    st.sae.mutable_config().act_scale = std::sqrt(static_cast<double>(sh.d_in)) / x0.norm(2, 1).mean().item<double>();
    st.sae.b_dec = x0.mean(0) * st.sae.config().act_scale;
  }
  for (auto& p : st.sae.parameters()) {
    st.adam.m.push_back(torch::zeros_like(p));
    st.adam.v.push_back(torch::zeros_like(p));
  }
  st.since_fired = torch::zeros({sh.d_sae}, torch::kLong);
  for (auto* p : {&st.sae.W_enc, &st.sae.b_enc, &st.sae.W_dec, &st.sae.b_dec}) p->requires_grad_(true);
  torch::AutoGradMode grad(true);
  lumen::SaeStepStats acc;
  auto quiet = [](const std::string&) {};
  const int64_t total = steps + 3;
  for (int64_t i = 0; i < 3; ++i) lumen::sae_train_step(st, opt, total, batch(i), acc, quiet);
  acc = lumen::SaeStepStats();
  auto t0 = Clock::now();
  for (int64_t i = 0; i < steps; ++i) lumen::sae_train_step(st, opt, total, batch(3 + i), acc, quiet);
  const double secs = seconds_since(t0);
  return {{"name", sh.name}, {"steps", steps}, {"rows", sh.rows}, {"seconds", secs}, {"tok_s", steps * sh.rows / secs},
          {"final_loss", acc.loss / std::max<int64_t>(1, acc.n)}};
}

// Rows/s served by the activation store (buffer refills included) for `rows` rows.
double time_store(const lumen::Model& model, const std::string& corpus, bool stop, int64_t rows) {
  lumen::ActivationStoreOptions o;
  o.corpus = corpus;
  o.hook_name = kHook;
  o.batch_tokens = 4096;
  o.buffer_tokens = 65536;
  o.stop_at_layer = stop;
  lumen::ActivationStore store(model, o);
  store.next_batch();  // the first fill happens here; time the steady state after it
  auto t0 = Clock::now();
  int64_t served = 0;
  while (served < rows) served += store.next_batch().size(0);
  return served / seconds_since(t0);
}

// The bare forward pass over the same kind of windows (16 x 128), to the hook or through the model.
double time_forward(const lumen::Model& model, const at::Tensor& windows, bool stop, int64_t rows) {
  torch::NoGradGuard ng;
  int64_t done = 0, w = 0;
  auto t0 = Clock::now();
  while (done < rows) {
    auto toks = windows.narrow(0, w % (windows.size(0) - 16), 16);
    w += 16;
    lumen::HookSet hooks;
    hooks.cache(kHook);
    lumen::RunOptions ro;
    ro.hooks = &hooks;
    ro.stop_at_layer = stop ? 3 : -1;
    model.forward(toks, ro);
    done += toks.numel() - 16;  // BOS rows are dropped by the store too
  }
  return done / seconds_since(t0);
}

int64_t peak_rss_kb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

int run(const std::string& model_path, const std::string& corpus, const std::vector<std::string>& saes,
        const std::string& work, const std::string& out, int64_t steps, int64_t harvest_tokens) {
  std::filesystem::create_directories(work);
  auto model = lumen::Model::load(model_path, {});
  json res;
  res["model"] = model_path;
  res["torch_threads"] = torch::get_num_threads();

  // Real activations for the update benchmark, saved for the eager side.
  std::fprintf(stderr, "bench_sae: collecting activations at %s\n", kHook);
  const int64_t need = 4096 * 8;
  lumen::ActivationStoreOptions so;
  so.corpus = corpus;
  so.hook_name = kHook;
  so.batch_tokens = 4096;
  lumen::ActivationStore store(model, so);
  std::vector<at::Tensor> parts;
  for (int64_t n = 0; n < need; n += 4096) parts.push_back(store.next_batch());
  auto acts = torch::cat(parts).contiguous();  // [need, 64]
  auto synth = torch::randn({need, 512}, torch::TensorOptions().dtype(torch::kFloat)) * 0.5 + 0.1;  // seeded below
  lumen::save_safetensors(work + "/acts.safetensors", {{"acts", acts}, {"synthetic", synth}}, {});
  res["update"] = json::array();
  for (const auto& sh : kShapes) {
    std::fprintf(stderr, "bench_sae: update, %s\n", sh.name);
    res["update"].push_back(time_update(sh, sh.d_in == 64 ? acts : synth, steps));
  }

  std::fprintf(stderr, "bench_sae: activation store\n");
  auto windows = lumen::tokenize_corpus(model, corpus, 128, "text", 400000);
  const int64_t rows = 4096 * 24;
  res["store"] = {{"store_stop_tok_s", time_store(model, corpus, true, rows)},
                  {"store_full_tok_s", time_store(model, corpus, false, rows)},
                  {"forward_stop_tok_s", time_forward(model, windows, true, rows)},
                  {"forward_full_tok_s", time_forward(model, windows, false, rows)}};

  std::fprintf(stderr, "bench_sae: harvest, %zu SAEs, %lld tokens\n", saes.size(), static_cast<long long>(harvest_tokens));
  std::vector<lumen::FeatureSource> sources;
  for (const auto& d : saes) sources.push_back(lumen::sae_feature_source(lumen::load_sae(d)));
  lumen::HarvestOptions ho;
  ho.corpus = corpus;
  ho.tokens = harvest_tokens;
  ho.out = work + "/harvest.db";
  ho.log = [](const std::string&) {};
  for (const char* suffix : {"", "-wal", "-shm", "-journal"}) std::filesystem::remove(ho.out + suffix);
  // The same windows the harvest reads, for the eager side.
  auto hw = lumen::tokenize_corpus(model, corpus, ho.ctx_len, "text", ho.tokens);
  lumen::save_safetensors(work + "/harvest_windows.safetensors", {{"windows", hw}}, {});
  auto t0 = Clock::now();
  auto hr = lumen::harvest_features(model, sources, ho);
  const double secs = seconds_since(t0);
  res["harvest"] = {{"tokens", hr.tokens}, {"windows", hr.windows}, {"seconds", secs}, {"tok_s", hr.tokens / secs},
                    {"n_saes", saes.size()}, {"batch", ho.batch}, {"ctx_len", ho.ctx_len}, {"top_k", ho.top_k},
                    {"peak_rss_mb", peak_rss_kb() / 1024.0}};
  std::ofstream(out) << res.dump(2) << "\n";
  std::fprintf(stderr, "bench_sae: wrote %s\n", out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  lumen::init_runtime(argc, argv);
  torch::manual_seed(0);
  std::vector<std::string> args(argv + 1, argv + argc);
  auto value = [&](const std::string& flag, const std::string& fallback) {
    for (size_t i = 0; i + 1 < args.size(); ++i)
      if (args[i] == flag) return args[i + 1];
    return fallback;
  };
  try {
    if (args.empty()) throw lumen::Error(lumen::ErrorKind::Arg, "usage: bench_sae export|run ... (see bench/bench_sae.cpp)");
    if (args[0] == "export") {
      auto model = lumen::Model::load(value("--model", ""), {});
      lumen::save_hf_checkpoint(model, value("--out", ""));
      return 0;
    }
    if (args[0] == "run") {
      std::vector<std::string> saes;
      for (size_t i = 0; i + 1 < args.size(); ++i)
        if (args[i] == "--sae") saes.push_back(args[i + 1]);
      return run(value("--model", ""), value("--corpus", ""), saes, value("--work", "bench-sae"), value("--out", "sae.json"),
                 std::stoll(value("--steps", "30")), std::stoll(value("--harvest-tokens", "100000")));
    }
    throw lumen::Error(lumen::ErrorKind::Arg, "unknown command '" + args[0] + "' (export or run)");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_sae: %s\n", e.what());
    return 1;
  }
}
