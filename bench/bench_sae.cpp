// bench_sae: the C++ half of `make bench`'s SAE and feature-harvest benchmarks (bench/run_sae.sh
// starts bench/baseline_sae.py, the PyTorch-eager side, which runs this program's `serve` and asks
// it for one measurement at a time, in rounds alternating with its own; bench/paired.py). It
// times, on stories260K:
//   update   SAE training steps exactly as train_sae runs them (src/sae/train_step.h), on real
//            activations that it saves so the eager side trains on the same rows;
//   store    ActivationStore rows/s with and without stop_at_layer, and the bare forward pass;
//   harvest  harvest_features with every SAE given, on windows it saves for the eager side.
//
//   bench_sae export --model M --out DIR              HF copy of M (what the eager side loads)
//   bench_sae serve --model M --corpus C --sae DIR... --work DIR --harvest-tokens N
//
// serve's requests (one JSON object per line; bench/serve.h):
//   {"op":"update","shape":i,"steps":n,"total":t}  n timed steps of kShapes[i]'s SAE; its first
//       request makes the SAE (a run of t steps, for the LR schedule) and takes 3 untimed steps
//   {"op":"store","stop":b,"rows":n}     rows/s of the (kept) store, after its first fill
//   {"op":"forward","stop":b,"rows":n}   rows/s of the bare forward over 16 x 128 windows
//   {"op":"harvest","threads":n}          a fresh harvest of --harvest-tokens tokens (n: its --threads)
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iterator>
#include <map>
#include <memory>
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
#include "serve.h"

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
const int64_t kWarmupSteps = 3;

// One shape's training run: a fresh TopK SAE on rows of `acts` (cycled), initialised as train_sae
// initialises a fresh run, after kWarmupSteps untimed steps.
struct UpdateRun {
  lumen::TrainOptions opt;
  lumen::SaeTrainState st;
  at::Tensor acts;
  int64_t rows = 0, total = 0, next = 0;

  UpdateRun(const UpdateShape& sh, const at::Tensor& acts_in, int64_t total_steps)
      : acts(acts_in), rows(sh.rows), total(total_steps + kWarmupSteps) {
    opt.sae.arch = lumen::SaeArch::TopK;
    opt.sae.d_in = sh.d_in;
    opt.sae.d_sae = sh.d_sae;
    opt.sae.k = sh.k;
    opt.sae.hook_name = kHook;
    opt.lr = 2e-3;
    opt.seed = 0;
    st = lumen::sae_train_state(opt.sae, opt, torch::kCPU);
    lumen::sae_train_init(st, opt, batch(0));
    steps(kWarmupSteps);
  }
  at::Tensor batch(int64_t i) const {
    const int64_t n_batches = acts.size(0) / rows;
    return acts.narrow(0, (i % n_batches) * rows, rows);
  }
  // Runs n steps; returns their mean loss.
  double steps(int64_t n) {
    lumen::SaeStepStats acc;
    for (int64_t i = 0; i < n; ++i) lumen::sae_train_step(st, opt, total, batch(next++), acc, [](const std::string&) {});
    return acc.loss / std::max<int64_t>(1, acc.n);
  }
};

// The bare forward pass over 16 x 128 windows, to the hook or through the model, continuing from
// window *w; rows/s (BOS rows are not counted: the store drops them too).
double time_forward(const lumen::Model& model, const at::Tensor& windows, bool stop, int64_t rows, int64_t& w) {
  torch::NoGradGuard ng;
  int64_t done = 0;
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
    done += toks.numel() - 16;
  }
  return done / seconds_since(t0);
}

int64_t peak_rss_kb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

int serve(const std::string& model_path, const std::string& corpus, const std::vector<std::string>& sae_dirs,
          const std::string& work, int64_t harvest_tokens) {
  std::filesystem::create_directories(work);
  auto model = lumen::Model::load(model_path, {});

  // Real activations for the update benchmark and the harvest's windows, saved for the eager side.
  std::fprintf(stderr, "bench_sae: collecting activations at %s\n", kHook);
  at::Tensor acts, synth;
  {
    lumen::ActivationStoreOptions so;
    so.corpus = corpus;
    so.hook_name = kHook;
    so.batch_tokens = 4096;
    lumen::ActivationStore store(model, so);
    std::vector<at::Tensor> parts;
    for (int i = 0; i < 8; ++i) parts.push_back(store.next_batch());
    acts = torch::cat(parts).contiguous();                                  // [32768, 64]
    synth = torch::randn({acts.size(0), 512}, torch::kFloat) * 0.5 + 0.1;  // seeded in main
  }
  lumen::save_safetensors(work + "/acts.safetensors", {{"acts", acts}, {"synthetic", synth}}, {});
  lumen::HarvestOptions ho;
  ho.corpus = corpus;
  ho.tokens = harvest_tokens;
  ho.out = work + "/harvest.db";
  ho.log = [](const std::string&) {};
  auto windows = lumen::tokenize_corpus(model, corpus, ho.ctx_len, "text", ho.tokens);  // what the harvest reads
  auto fwd_windows = lumen::tokenize_corpus(model, corpus, 128, "text", 400000);     // the store's window length
  lumen::save_safetensors(work + "/windows.safetensors", {{"harvest", windows}, {"forward", fwd_windows}}, {});
  std::vector<lumen::FeatureSource> sources;
  for (const auto& d : sae_dirs) sources.push_back(lumen::sae_feature_source(lumen::load_sae(d)));

  std::map<int64_t, std::unique_ptr<UpdateRun>> updates;
  std::map<bool, std::unique_ptr<lumen::ActivationStore>> stores;
  int64_t window = 0;
  const json ready = {{"model", model_path}, {"torch_threads", torch::get_num_threads()}, {"n_saes", sources.size()},
                      {"harvest", {{"batch", ho.batch}, {"ctx_len", ho.ctx_len}, {"top_k", ho.top_k}}}};
  return bench::serve(ready, [&](const json& req) -> json {
    const std::string op = req.at("op").get<std::string>();
    if (op == "update") {
      const int64_t i = req.at("shape").get<int64_t>();
      if (i < 0 || i >= static_cast<int64_t>(std::size(kShapes)))
        throw lumen::Error(lumen::ErrorKind::Arg, "update shape " + std::to_string(i) + " is not in kShapes");
      const auto& sh = kShapes[i];
      auto& run = updates[i];
      if (!run) run = std::make_unique<UpdateRun>(sh, sh.d_in == 64 ? acts : synth, req.at("total").get<int64_t>());
      const int64_t n = req.at("steps").get<int64_t>();
      auto t0 = Clock::now();
      const double loss = run->steps(n);
      const double secs = seconds_since(t0);
      const int64_t dead = (run->st.since_fired >= run->opt.dead_after_tokens).sum().item<int64_t>();  // AuxK runs when > 0
      return {{"name", sh.name}, {"steps", n}, {"rows", sh.rows}, {"seconds", secs}, {"rows_s", n * sh.rows / secs},
              {"loss", loss}, {"dead", dead}};
    }
    if (op == "store") {
      const bool stop = req.at("stop").get<bool>();
      auto& store = stores[stop];
      if (!store) {
        lumen::ActivationStoreOptions o;
        o.corpus = corpus;
        o.hook_name = kHook;
        o.batch_tokens = 4096;
        o.buffer_tokens = 65536;
        o.stop_at_layer = stop;
        store = std::make_unique<lumen::ActivationStore>(model, o);
        store->next_batch();  // the first fill happens here; time the steady state after it
      }
      const int64_t rows = req.at("rows").get<int64_t>();
      auto t0 = Clock::now();
      int64_t served = 0;
      while (served < rows) served += store->next_batch().size(0);
      return {{"rows_s", served / seconds_since(t0)}};
    }
    if (op == "forward")
      return {{"rows_s", time_forward(model, fwd_windows, req.at("stop").get<bool>(), req.at("rows").get<int64_t>(), window)}};
    if (op == "harvest") {
      for (const char* suffix : {"", "-wal", "-shm", "-journal"}) std::filesystem::remove(ho.out + suffix);
      lumen::HarvestOptions o = ho;
      o.threads = req.value("threads", int64_t{0});
      auto t0 = Clock::now();
      auto hr = lumen::harvest_features(model, sources, o);
      const double secs = seconds_since(t0);
      return {{"tokens", hr.tokens}, {"windows", hr.windows}, {"seconds", secs}, {"tok_s", hr.tokens / secs},
              {"peak_rss_mb", peak_rss_kb() / 1024.0}};
    }
    throw lumen::Error(lumen::ErrorKind::Arg, "unknown request '" + op + "'");
  });
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
    if (args.empty()) throw lumen::Error(lumen::ErrorKind::Arg, "usage: bench_sae export|serve ... (see bench/bench_sae.cpp)");
    if (args[0] == "export") {
      auto model = lumen::Model::load(value("--model", ""), {});
      lumen::save_hf_checkpoint(model, value("--out", ""));
      return 0;
    }
    if (args[0] == "serve") {
      std::vector<std::string> saes;
      for (size_t i = 0; i + 1 < args.size(); ++i)
        if (args[i] == "--sae") saes.push_back(args[i + 1]);
      return serve(value("--model", ""), value("--corpus", ""), saes, value("--work", "bench-sae"),
                   std::stoll(value("--harvest-tokens", "30000")));
    }
    throw lumen::Error(lumen::ErrorKind::Arg, "unknown command '" + args[0] + "' (export or serve)");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_sae: %s\n", e.what());
    return 1;
  }
}
