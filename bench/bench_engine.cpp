// bench_engine: the C++ half of `make bench`. It makes seeded random Llama checkpoints and times
// lumen on one of them: prefill, KV-cache decode, forward+backward to the input embeddings, the
// cost of caching every residual stream, Model::load, and a GEMM roofline measured in this same
// process and library. Results are JSON; bench/baseline_engine.py writes the same layout for
// PyTorch eager and turns both into the table (see bench/README.md).
//
//   bench_engine make-model --out DIR --dim D --layers L --heads H --hidden F [--vocab V] [--ctx N] [--seed S]
//   bench_engine run --model DIR --out FILE.json [--shape NAME] [--reps N] [--decode-reps N]
//                    [--new-tokens N] [--prefill-shapes 1x128,8x128,64x16] [--only a,b] [--threads N]
//                    [--device cpu|cuda] [--dtype f32|bf16]
//   bench_engine serve --model DIR [--threads N]
//
// `serve` answers one measurement per request line, for bench/baseline_engine.py's paired rounds
// against eager (prefill, decode, fwd+bwd, roofline); `run` times whole sections in one process
// (load, the GEMV probe, hook caching, the value check and the OpenMP runs).
//
// Sections (`--only` picks some): load, roofline, gemv, prefill, decode, fwd_bwd, hooks, check. `--threads N`
// sets torch's intra-op thread count (default: torch's own choice, recorded in the output).
// `--device cuda` loads the model onto the GPU (at `--dtype`) and runs roofline, prefill, decode,
// fwd_bwd, hooks and check there (bench/run_cuda.sh); load and gemv are CPU measurements and are
// skipped with a note in the JSON.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/cuda.h>
#include <torch/torch.h>

#include "lumen/error.h"
#include "lumen/generate.h"
#include "lumen/hooks.h"
#include "lumen/model.h"
#include "base/gemv.h"
#include "lumen/runtime.h"
#include "lumen/tensors.h"
#include "serve.h"

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// The workload sizes; baseline_engine.py uses the same ones.
struct Batch {
  int64_t b, t;
  std::string name() const { return std::to_string(b) + "x" + std::to_string(t); }
};
const char* kPrefillDefault = "1x128,8x128,64x16";
const Batch kTrain = {8, 128};  // fwd+bwd and hook caching
const int64_t kPromptLen = 16, kNewTokensDefault = 128, kWarmupNewTokens = 8;
// Steady decode rate: kWindow tokens timed from the first generated token's arrival to the
// (kWindow+1)-th's, so runs of different lengths compare (the OpenMP runs decode 33).
const int64_t kWindow = 32;
const char* kCachePatterns = "blocks.*.hook_resid_post,hook_embed";

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Where `run` computes (its --device): the inputs go there, and every timed region waits for it.
c10::Device g_device(c10::kCPU);
c10::ScalarType g_dtype = c10::kFloat;

// CUDA kernels run asynchronously: without a synchronize the clock would time their launches, not
// the work. A no-op on the CPU.
void sync_device() {
  if (g_device.is_cuda()) torch::cuda::synchronize(g_device.has_index() ? g_device.index() : -1);
}

// `warmup` untimed calls, then `reps` timed ones (seconds each). On CUDA the queue is drained before
// the first clock read and after every call.
std::vector<double> time_reps(int warmup, int reps, const std::function<void()>& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  sync_device();
  std::vector<double> out;
  for (int i = 0; i < reps; ++i) {
    auto t0 = Clock::now();
    fn();
    sync_device();
    out.push_back(seconds_since(t0));
  }
  return out;
}

json timing(const std::vector<double>& times) { return {{"times", times}, {"median", median(times)}}; }

// Token ids both implementations derive the same way, spread over the vocabulary.
int64_t token_at(int64_t b, int64_t t, int64_t vocab) { return 1 + (b * 7919 + t * 104729 + 12345) % (vocab - 1); }

// [B,T] int64 on `run`'s device (filled on the CPU, then copied once, outside any timed region).
torch::Tensor bench_tokens(int64_t B, int64_t T, int64_t vocab) {
  auto out = torch::empty({B, T}, torch::kLong);
  auto a = out.accessor<int64_t, 2>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) a[b][t] = token_at(b, t, vocab);
  return out.to(g_device);
}

// Drops the file's pages from the page cache (clean pages nobody maps), so the next read comes
// from disk: a "cold-ish" load without root.
void evict_from_page_cache(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

// ---- arguments ----------------------------------------------------------------------------------

struct Args {
  std::map<std::string, std::string> kv;
  std::string get(const std::string& k, const std::string& fallback = "") const {
    auto it = kv.find(k);
    if (it != kv.end()) return it->second;
    if (fallback.empty()) throw lumen::Error(lumen::ErrorKind::Arg, "missing --" + k);
    return fallback;
  }
  int64_t num(const std::string& k, int64_t fallback = -1) const {
    return std::stoll(get(k, fallback >= 0 ? std::to_string(fallback) : ""));
  }
};

Args parse_args(int argc, char** argv, int first) {
  Args a;
  for (int i = first; i < argc; ++i) {
    std::string k = argv[i];
    if (k.rfind("--", 0) != 0 || i + 1 >= argc)
      throw lumen::Error(lumen::ErrorKind::Arg, "expected --key value pairs, got '" + k + "'");
    a.kv[k.substr(2)] = argv[++i];
  }
  return a;
}

// ---- make-model ---------------------------------------------------------------------------------

// A HF llama folder (config.json + model.safetensors, F32, tied embeddings as in the stories
// models) with N(0, 0.02) weights. Skipped when the folder already holds the same config.
int make_model(const Args& a) {
  const std::string dir = a.get("out");
  const int64_t D = a.num("dim"), L = a.num("layers"), H = a.num("heads"), F = a.num("hidden");
  const int64_t V = a.num("vocab", 32000), ctx = a.num("ctx", 1024), seed = a.num("seed", 1);
  const int64_t E = D / H;
  json cfg = {{"architectures", {"LlamaForCausalLM"}},
              {"model_type", "llama"},
              {"hidden_size", D},
              {"intermediate_size", F},
              {"num_hidden_layers", L},
              {"num_attention_heads", H},
              {"num_key_value_heads", H},
              {"vocab_size", V},
              {"max_position_embeddings", ctx},
              {"rms_norm_eps", 1e-5},
              {"rope_theta", 10000.0},
              {"hidden_act", "silu"},
              {"tie_word_embeddings", true},
              {"torch_dtype", "float32"},
              {"bos_token_id", 1},
              {"eos_token_id", 2},
              {"lumen_bench_seed", seed}};
  const std::string cfg_path = dir + "/config.json", st_path = dir + "/model.safetensors";
  if (std::filesystem::exists(st_path) && std::filesystem::exists(cfg_path)) {
    std::ifstream in(cfg_path);
    json old = json::parse(in, nullptr, false);
    if (old == cfg) {
      std::cout << dir << ": up to date\n";
      return 0;
    }
  }
  std::filesystem::create_directories(dir);
  std::filesystem::remove(cfg_path);  // written last: its presence marks a complete folder
  torch::manual_seed(static_cast<uint64_t>(seed));
  auto w = [](std::vector<int64_t> shape) { return torch::randn(shape) * 0.02; };
  auto norm_w = [&](int64_t n) { return 1.0 + torch::randn({n}) * 0.02; };
  std::vector<std::pair<std::string, torch::Tensor>> t;
  t.emplace_back("model.embed_tokens.weight", w({V, D}));
  for (int64_t l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.emplace_back(p + "input_layernorm.weight", norm_w(D));
    t.emplace_back(p + "self_attn.q_proj.weight", w({H * E, D}));
    t.emplace_back(p + "self_attn.k_proj.weight", w({H * E, D}));
    t.emplace_back(p + "self_attn.v_proj.weight", w({H * E, D}));
    t.emplace_back(p + "self_attn.o_proj.weight", w({D, H * E}));
    t.emplace_back(p + "post_attention_layernorm.weight", norm_w(D));
    t.emplace_back(p + "mlp.gate_proj.weight", w({F, D}));
    t.emplace_back(p + "mlp.up_proj.weight", w({F, D}));
    t.emplace_back(p + "mlp.down_proj.weight", w({D, F}));
  }
  t.emplace_back("model.norm.weight", norm_w(D));
  lumen::save_safetensors(st_path, t, {{"format", "pt"}});
  std::ofstream(cfg_path) << cfg.dump(2) << "\n";
  int64_t n = 0;
  for (auto& kv : t) n += kv.second.numel();
  std::cout << dir << ": " << n << " parameters\n";
  return 0;
}

// ---- run ----------------------------------------------------------------------------------------

// Best GFLOP/s over products of the model's own GEMM shapes with 1024 rows, through the same
// torch ops (and BLAS, or cuBLAS) the forward uses: fp32 on the CPU, --device/--dtype under `run`.
// On CUDA one product of the small shapes takes microseconds, about what a synchronize costs, so
// each timed repetition there runs kGpuRooflineCalls of them.
const int kGpuRooflineCalls = 10;  // baseline_engine.py uses the same count

json roofline(const lumen::ModelConfig& c, int reps) {
  torch::NoGradGuard ng;
  const int64_t M = 1024, D = c.d_model, F = c.d_mlp;
  const auto opts = torch::TensorOptions().device(g_device).dtype(g_dtype);
  const int calls = g_device.is_cuda() ? kGpuRooflineCalls : 1;
  json shapes = json::object();
  double best = 0;
  auto run = [&](const std::string& name, int64_t k, int64_t n, bool weight_layout) {
    auto x = torch::randn({M, k}, opts);
    auto w = weight_layout ? torch::randn({n, k}, opts) : torch::randn({k, n}, opts);
    auto t = time_reps(2, reps, [&] {
      for (int i = 0; i < calls; ++i) auto y = weight_layout ? torch::linear(x, w) : torch::mm(x, w);
    });
    const double g = 2.0 * M * k * n * calls / *std::min_element(t.begin(), t.end()) / 1e9;
    shapes[name] = g;
    best = std::max(best, g);
  };
  run("mm " + std::to_string(M) + "x" + std::to_string(D) + "x" + std::to_string(F), D, F, false);
  run("linear " + std::to_string(M) + "x" + std::to_string(D) + "->" + std::to_string(F), D, F, true);
  run("linear " + std::to_string(M) + "x" + std::to_string(F) + "->" + std::to_string(D), F, D, true);
  run("linear " + std::to_string(M) + "x" + std::to_string(D) + "->" + std::to_string(D), D, D, true);
  return {{"gflops", best}, {"shapes", shapes}};
}

// Decode multiplies one row by each weight matrix. torch::linear sends that to a GEMM with M = 1;
// a GEMV reads the same weights without packing them. Both timed on the unembedding and the
// MLP's up projection, so the report can show what decode leaves on the table.
json gemv_probe(const lumen::ModelConfig& c, int reps) {
  torch::NoGradGuard ng;
  json out = json::object();
  auto probe = [&](const std::string& name, int64_t rows, int64_t cols) {
    auto w = torch::randn({rows, cols}) * 0.02;
    auto x = torch::randn({1, cols});
    auto xv = x.view({cols});
    const int n = 10;
    auto best_ms = [&](const std::function<void()>& fn) {
      auto t = time_reps(1, reps, [&] {
        for (int i = 0; i < n; ++i) fn();
      });
      return 1e3 * *std::min_element(t.begin(), t.end()) / n;
    };
    const double lin = best_ms([&] { auto y = torch::linear(x, w); });
    const double mv = best_ms([&] { auto y = torch::mv(w, xv); });
    auto y = torch::empty({rows});
    const double own = best_ms([&] { lumen::gemv_rows(w.data_ptr<float>(), xv.data_ptr<float>(), y.data_ptr<float>(), rows, cols); });
    out[name] = {{"linear_ms", lin}, {"mv_ms", mv}, {"speedup", lin / mv}, {"lumen_gemv_ms", own},
                 {"gbytes_per_s", rows * cols * 4 / (own * 1e6)}};
  };
  probe("unembed [" + std::to_string(c.d_vocab) + "," + std::to_string(c.d_model) + "]", c.d_vocab, c.d_model);
  probe("mlp up [" + std::to_string(c.d_mlp) + "," + std::to_string(c.d_model) + "]", c.d_mlp, c.d_model);
  return out;
}

json bench_load(const std::string& dir, int reps) {
  const std::string st = dir + "/model.safetensors";
  evict_from_page_cache(st);
  evict_from_page_cache(dir + "/config.json");
  json out;
  {
    auto t0 = Clock::now();
    auto model = lumen::Model::load(dir);
    out["cold_ms"] = 1e3 * seconds_since(t0);
    // With mmap the weights are read on first use: one token through every layer touches them all.
    torch::NoGradGuard ng;
    auto tok = bench_tokens(1, 1, model.config().d_vocab);
    t0 = Clock::now();
    model.forward(tok);
    out["first_forward_cold_ms"] = 1e3 * seconds_since(t0);
  }
  std::vector<double> warm;
  for (int i = 0; i < reps; ++i) {
    auto t0 = Clock::now();
    auto model = lumen::Model::load(dir);
    warm.push_back(1e3 * seconds_since(t0));
  }
  out["warm_ms"] = warm;
  out["warm_median_ms"] = median(warm);
  return out;
}

std::vector<Batch> parse_batches(const std::string& list) {
  std::vector<Batch> out;
  std::stringstream ss(list);
  for (std::string w; std::getline(ss, w, ',');) {
    const auto x = w.find('x');
    if (x == std::string::npos) throw lumen::Error(lumen::ErrorKind::Arg, "batch '" + w + "' is not BxT");
    out.push_back({std::stoll(w.substr(0, x)), std::stoll(w.substr(x + 1))});
  }
  return out;
}

json bench_prefill(const lumen::Model& model, const std::vector<Batch>& batches, int reps) {
  torch::NoGradGuard ng;
  json out = json::object();
  for (const Batch& bt : batches) {
    auto tok = bench_tokens(bt.b, bt.t, model.config().d_vocab);
    out[bt.name()] = timing(time_reps(1, reps, [&] { model.forward(tok); }));
  }
  return out;
}

// Greedy decoding of `new_tokens` after the bench prompt: decode seconds (from the end of the
// prompt pass), end-to-end seconds, the steady window (kWindow tokens from the first generated
// token's arrival) when the run is long enough, and the tokens.
struct DecodeRun {
  double decode = 0, e2e = 0, window = -1;
  std::vector<int32_t> tokens;
};

DecodeRun decode_once(const lumen::Model& model, int64_t new_tokens) {
  const int64_t V = model.config().d_vocab;
  std::vector<int32_t> prompt;
  for (int64_t t = 0; t < kPromptLen; ++t) prompt.push_back(static_cast<int32_t>(token_at(0, t, V)));
  lumen::GenerateOptions go;
  go.use_default_stops = false;  // a random model may well produce EOS; always decode the full run
  go.max_new_tokens = new_tokens;
  std::vector<Clock::time_point> arrivals;
  // On CUDA each step copies its logits to the host for the sampler, so a token's arrival (and the
  // end of decode_seconds) follows finished work. decode_seconds starts when lumen::generate has
  // launched the prompt pass, so it holds that pass's unfinished tail; eager's loop times the same.
  go.on_token = [&](size_t, int32_t, int32_t) { arrivals.push_back(Clock::now()); };
  DecodeRun out;
  sync_device();
  auto t0 = Clock::now();
  auto res = lumen::generate(model, {prompt}, go);
  out.e2e = seconds_since(t0);
  out.decode = res.decode_seconds;
  if (static_cast<int64_t>(arrivals.size()) > kWindow)
    out.window = std::chrono::duration<double>(arrivals[kWindow] - arrivals[0]).count();
  out.tokens = res.generated[0];
  return out;
}

json bench_decode(const lumen::Model& model, int64_t new_tokens, int reps) {
  decode_once(model, kWarmupNewTokens);  // warm-up
  std::vector<double> decode, e2e, window;
  std::vector<int32_t> generated;
  for (int i = 0; i < reps; ++i) {
    auto r = decode_once(model, new_tokens);
    decode.push_back(r.decode);
    e2e.push_back(r.e2e);
    if (r.window >= 0) window.push_back(r.window);
    generated = r.tokens;
  }
  json out = {{"prompt", kPromptLen}, {"new_tokens", static_cast<int64_t>(generated.size())},
              {"times", decode},      {"median", median(decode)},
              {"e2e_median", median(e2e)}, {"tokens", generated}};
  if (!window.empty()) out["window"] = {{"tokens", kWindow}, {"times", window}, {"median", median(window)}};
  return out;
}

// One forward at kTrain from input_embeds, loss = logsumexp(logits).mean(), and the gradient with
// respect to the embeddings (the weights need no grad); returns the gradient's norm.
std::function<double()> fwd_bwd_step(const lumen::Model& model) {
  auto tok = bench_tokens(kTrain.b, kTrain.t, model.config().d_vocab);
  torch::Tensor emb0;
  {
    torch::NoGradGuard ng;
    emb0 = model.embed_tokens(tok).contiguous();
  }
  return [&model, emb0] {
    auto emb = emb0.detach().requires_grad_(true);
    lumen::RunOptions ro;
    ro.input_embeds = emb;
    auto loss = model.forward(torch::Tensor(), ro).logsumexp(-1).mean();
    auto g = torch::autograd::grad({loss}, {emb})[0];
    return g.norm().item<double>();
  };
}

json bench_fwd_bwd(const lumen::Model& model, int reps) {
  auto step = fwd_bwd_step(model);
  double grad_norm = 0;
  json out = timing(time_reps(1, reps, [&] { grad_norm = step(); }));
  out["grad_norm"] = grad_norm;
  return {{kTrain.name(), out}};
}

// Plain and caching forwards alternate, so drifts in machine load hit both alike; the overhead is
// the median of the per-pair ratios.
json bench_hooks(const lumen::Model& model, int reps) {
  torch::NoGradGuard ng;
  auto tok = bench_tokens(kTrain.b, kTrain.t, model.config().d_vocab);
  lumen::HookSet hooks;
  hooks.cache(kCachePatterns);
  lumen::RunOptions ro;
  ro.hooks = &hooks;
  std::function<void()> plain = [&] { model.forward(tok); };
  std::function<void()> cached = [&] {
    hooks.clear_cache();
    model.forward(tok, ro);
  };
  plain();
  cached();
  std::vector<double> tp, tc, ratio;
  for (int i = 0; i < reps; ++i) {
    // Alternate which goes first, so neither always runs right after the other's frees.
    auto a = time_reps(0, 1, i % 2 ? cached : plain)[0];
    auto b = time_reps(0, 1, i % 2 ? plain : cached)[0];
    const double p = i % 2 ? b : a, c = i % 2 ? a : b;
    tp.push_back(p);
    tc.push_back(c);
    ratio.push_back(c / p - 1.0);
  }
  const int64_t n_cached = static_cast<int64_t>(hooks.cached().size());
  return {{kTrain.name(),
           {{"plain", timing(tp)}, {"cached", timing(tc)}, {"overhead", ratio},
            {"overhead_median", median(ratio)}, {"n_cached", n_cached}}}};
}

// What the Python side must reproduce: the last position's logits of the 1x128 prefill (summed in
// float32 whatever the compute dtype).
json check_values(const lumen::Model& model) {
  torch::NoGradGuard ng;
  auto logits = model.forward(bench_tokens(1, 128, model.config().d_vocab)).select(1, 127).select(0, 0).to(torch::kFloat);
  return {{"logits_last_sum", logits.sum().item<double>()},
          {"logits_last_absmax", logits.abs().max().item<double>()},
          {"argmax_last", logits.argmax().item<int64_t>()}};
}

// --device cpu|cuda[:N] and --dtype f32|bf16 (the two the eager side and the report know), checked
// before anything loads.
void parse_device_dtype(const Args& a) {
  g_device = lumen::parse_device(a.get("device", "cpu"));
  g_dtype = lumen::parse_dtype(a.get("dtype", "f32"));
  lumen::require(g_dtype == torch::kFloat || g_dtype == torch::kBFloat16, lumen::ErrorKind::Arg,
                 "--dtype " + a.get("dtype", "f32") + ": the benchmark runs f32 or bf16");
}

int run(const Args& a) {
  parse_device_dtype(a);
  const std::string dir = a.get("model"), out_path = a.get("out");
  const int reps = static_cast<int>(a.num("reps", 5));
  const int decode_reps = static_cast<int>(a.num("decode-reps", 3));
  const int64_t new_tokens = a.num("new-tokens", kNewTokensDefault);
  const auto batches = parse_batches(a.get("prefill-shapes", kPrefillDefault));
  std::set<std::string> only;
  {
    std::stringstream ss(a.get("only", "load,roofline,gemv,prefill,decode,fwd_bwd,hooks,check"));
    for (std::string w; std::getline(ss, w, ',');) only.insert(w);
  }
  json skipped = json::object();
  if (g_device.is_cuda()) {
    // Both are CPU measurements: load times mmap and the page cache, gemv lumen's float32 CPU kernel.
    if (only.erase("load")) skipped["load"] = "not on CUDA: times mmap and the page cache, a CPU measurement";
    if (only.erase("gemv")) skipped["gemv"] = "not on CUDA: lumen's gemv is its float32 CPU decode kernel";
  }
  if (const int64_t threads = a.num("threads", 0); threads > 0) at::set_num_threads(static_cast<int>(threads));
  json out;
  out["impl"] = "lumen";
  out["shape"] = a.get("shape", std::filesystem::path(dir).filename().string());
  out["model"] = dir;
  out["omp_wait_policy"] = lumen::omp_wait_policy();
  out["intra_op_threads"] = at::get_num_threads();
  out["threads_requested"] = a.num("threads", 0);
  out["torch"] = TORCH_VERSION;
  out["reps"] = reps;
  out["decode_reps"] = decode_reps;
  // Recorded when asked for, so that the default CPU run writes the same keys as before.
  if (a.kv.count("device") || a.kv.count("dtype")) {
    out["device"] = g_device.str();
    out["dtype"] = g_dtype == torch::kBFloat16 ? "bf16" : "f32";
    if (g_device.is_cuda()) out["cuda_device_count"] = torch::cuda::device_count();
  }
  if (!skipped.empty()) out["skipped"] = skipped;

  // Loading goes first: the cold measurement needs the file unmapped by anyone.
  if (only.count("load")) out["load"] = bench_load(dir, reps);
  lumen::LoadOptions lo;
  lo.device = g_device;
  lo.dtype = g_dtype;
  auto model = lumen::Model::load(dir, lo);
  const auto& c = model.config();
  out["config"] = {{"d_model", c.d_model}, {"n_layers", c.n_layers}, {"n_heads", c.n_heads},
                   {"n_kv_heads", c.n_kv_heads}, {"d_head", c.d_head}, {"d_mlp", c.d_mlp},
                   {"d_vocab", c.d_vocab}, {"n_ctx", c.n_ctx}, {"n_params", model.num_parameters()}};
  auto section = [&](const char* name, const std::function<json()>& fn) {
    if (!only.count(name)) return;
    std::cerr << "  lumen " << out["shape"].get<std::string>() << " " << name << "...\n";
    auto t0 = Clock::now();
    out[name] = fn();
    std::cerr << "    " << seconds_since(t0) << " s\n";
  };
  section("roofline", [&] { return roofline(c, std::max(reps, 3)); });
  section("gemv", [&] { return gemv_probe(c, std::max(reps, 3)); });
  section("prefill", [&] { return bench_prefill(model, batches, reps); });
  section("decode", [&] { return bench_decode(model, new_tokens, decode_reps); });
  section("fwd_bwd", [&] { return bench_fwd_bwd(model, reps); });
  section("hooks", [&] { return bench_hooks(model, reps); });
  section("check", [&] { return check_values(model); });
  if (only.count("roofline")) {
    // Measured again after the workloads: on a shared machine the best of both moments is the
    // closer estimate of what the GEMMs can do.
    json again = roofline(c, std::max(reps, 3));
    for (auto& [name, g] : again["shapes"].items())
      out["roofline"]["shapes"][name] = std::max(out["roofline"]["shapes"][name].get<double>(), g.get<double>());
    out["roofline"]["gflops"] = std::max(out["roofline"]["gflops"].get<double>(), again["gflops"].get<double>());
  }

  std::ofstream(out_path) << out.dump(1) << "\n";
  return 0;
}

// The lumen side of the paired rounds (bench/paired.py, bench/serve.h). Requests:
//   {"op":"roofline","reps":n}                          roofline(), as in `run`
//   {"op":"prefill","batch":"BxT","warmup":w,"calls":n} seconds per forward, the mean of n calls
//   {"op":"fwd_bwd","warmup":w,"calls":n}               the same for the fwd+bwd step
//   {"op":"decode","new_tokens":n,"warmup":b}           one greedy decode (after a short one if b)
int serve(const Args& a) {
  if (const int64_t threads = a.num("threads", 0); threads > 0) at::set_num_threads(static_cast<int>(threads));
  auto model = lumen::Model::load(a.get("model"));
  const auto& c = model.config();
  std::map<std::string, torch::Tensor> tokens;  // prefill inputs by "BxT"
  std::function<double()> fwd_bwd;
  // `warmup` untimed calls, then the mean seconds of `calls` timed ones.
  auto mean_seconds = [](const json& req, const std::function<void()>& fn) {
    const int64_t calls = std::max<int64_t>(1, req.value("calls", int64_t{1}));
    for (int64_t i = 0; i < req.value("warmup", int64_t{0}); ++i) fn();
    auto t0 = Clock::now();
    for (int64_t i = 0; i < calls; ++i) fn();
    return seconds_since(t0) / calls;
  };
  const json ready = {{"impl", "lumen"}, {"omp_wait_policy", lumen::omp_wait_policy()},
                      {"intra_op_threads", at::get_num_threads()}, {"torch", TORCH_VERSION},
                      {"config", {{"d_model", c.d_model}, {"n_layers", c.n_layers}, {"n_heads", c.n_heads},
                                  {"n_kv_heads", c.n_kv_heads}, {"d_head", c.d_head}, {"d_mlp", c.d_mlp},
                                  {"d_vocab", c.d_vocab}, {"n_ctx", c.n_ctx}, {"n_params", model.num_parameters()}}}};
  return bench::serve(ready, [&](const json& req) -> json {
    const std::string op = req.at("op").get<std::string>();
    if (op == "roofline") return roofline(c, static_cast<int>(req.at("reps").get<int64_t>()));
    if (op == "prefill") {
      const std::string name = req.at("batch").get<std::string>();
      auto& tok = tokens[name];
      if (!tok.defined()) {
        const Batch bt = parse_batches(name).at(0);
        tok = bench_tokens(bt.b, bt.t, c.d_vocab);
      }
      torch::NoGradGuard ng;
      return {{"seconds", mean_seconds(req, [&] { model.forward(tok); })}};
    }
    if (op == "fwd_bwd") {
      if (!fwd_bwd) fwd_bwd = fwd_bwd_step(model);
      double grad_norm = 0;
      const double secs = mean_seconds(req, [&] { grad_norm = fwd_bwd(); });
      return {{"seconds", secs}, {"grad_norm", grad_norm}};
    }
    if (op == "decode") {
      if (req.value("warmup", false)) decode_once(model, kWarmupNewTokens);
      auto r = decode_once(model, req.at("new_tokens").get<int64_t>());
      json out = {{"seconds", r.decode}, {"e2e", r.e2e}, {"tokens", r.tokens}};
      if (r.window >= 0) out["window"] = r.window;
      return out;
    }
    throw lumen::Error(lumen::ErrorKind::Arg, "unknown request '" + op + "'");
  });
}

}  // namespace

int main(int argc, char** argv) {
  lumen::init_runtime(argc, argv);
  const std::string usage =
      "usage: bench_engine make-model --out DIR --dim D --layers L --heads H --hidden F [--vocab V] [--ctx N] [--seed S]\n"
      "       bench_engine run --model DIR --out FILE.json [--shape NAME] [--reps N] [--decode-reps N]\n"
      "                        [--new-tokens N] [--prefill-shapes BxT,...] [--only a,b,...] [--threads N]\n"
      "                        [--device cpu|cuda] [--dtype f32|bf16]\n"
      "       bench_engine serve --model DIR [--threads N]   (requests on stdin: bench/paired.py)\n";
  if (argc < 2) {
    std::cerr << usage;
    return 2;
  }
  try {
    const std::string cmd = argv[1];
    const Args args = parse_args(argc, argv, 2);
    if (cmd == "make-model") return make_model(args);
    if (cmd == "run") return run(args);
    if (cmd == "serve") return serve(args);
    std::cerr << usage;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "bench_engine: " << e.what() << "\n";
    return 1;
  }
}
