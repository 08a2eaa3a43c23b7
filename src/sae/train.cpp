// SAE training: MSE + L1 (ReLU, with L1 warm-up) or MSE + AuxK (TopK / BatchTopK, Gao et al.
// 2024 sec. A.2), Adam with LR warm-up and linear decay, unit-norm decoder rows, dead-latent
// counting and revival, and atomic checkpoints from which a resumed run reproduces an
// uninterrupted one bit for bit.
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

#include "lumen/error.h"
#include "lumen/files.h"
#include "lumen/sae.h"
#include "lumen/tensors.h"
#include "sae/train_step.h"

namespace lumen {
namespace {

const char* kParamNames[] = {"W_enc", "b_enc", "W_dec", "b_dec"};

uint64_t next_u64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// What must match for a checkpoint to continue this run.
std::string fingerprint(const TrainOptions& o, int64_t d_in) {
  nlohmann::json j;
  j["arch"] = to_string(o.sae.arch);
  j["d_in"] = d_in;
  j["d_sae"] = o.sae.d_sae;
  j["k"] = o.sae.k;
  j["hook"] = o.sae.hook_name;
  j["apply_b_dec_to_input"] = o.sae.apply_b_dec_to_input;
  j["tokens"] = o.total_tokens;
  j["lr"] = o.lr;
  j["l1"] = o.l1_coeff;
  j["aux_k_coeff"] = o.aux_k_coeff;
  j["seed"] = o.seed;
  j["batch_tokens"] = o.data.batch_tokens;
  j["buffer_tokens"] = o.data.buffer_tokens;
  j["ctx_len"] = o.data.ctx_len;
  j["model_batch"] = o.data.model_batch;
  j["normalize"] = o.normalize_activations;
  return j.dump();
}

at::Tensor scalar_i(int64_t v) { return torch::tensor({v}, torch::kLong); }
at::Tensor scalar_d(double v) { return torch::tensor({v}, torch::kDouble); }

// Sae::pre_activation in normalised units, arranged for training: (x_s - b_dec) W_enc + b_enc =
// x_s W_enc + (b_enc - b_dec W_enc), with x_s = x * act_scale [N,D]. The rows need no gradient, so
// the backward skips the [N,S]x[S,D] product that would carry one to them only for b_dec to sum it
// over the rows; b_dec's gradient comes through the [D]x[D,S] product instead.
at::Tensor train_pre_activation(const Sae& sae, const at::Tensor& xs) {
  const auto bias = sae.config().apply_b_dec_to_input ? sae.b_enc - torch::matmul(sae.b_dec, sae.W_enc) : sae.b_enc;
  return torch::addmm(bias, xs, sae.W_enc);  // [N,S]
}

// f W_dec for codes with k nonzeros per row, given as their latents idx [N,k] and values val
// [N,k]: one embedding bag of k decoder rows per input row, N*k*D multiply-adds instead of the
// dense product's N*S*D, in the backward too (W_dec's gradient touches only the rows used).
at::Tensor sparse_decode(const at::Tensor& W_dec, const at::Tensor& idx, const at::Tensor& val) {
  const int64_t N = idx.size(0), k = idx.size(1);
  auto offsets = torch::arange(0, N * k, k, idx.options());
  return std::get<0>(torch::embedding_bag(W_dec, idx.reshape({-1}), offsets, /*scale_grad_by_freq=*/false,
                                          /*mode=sum*/ 0, /*sparse=*/false, val.reshape({-1})));  // [N,D]
}

}  // namespace

SaeTrainState sae_train_state(const SaeConfig& cfg, const TrainOptions& opt, c10::Device device) {
  SaeTrainState st;
  st.sae = Sae::init(cfg, opt.seed, device);
  for (auto& p : st.sae.parameters()) {
    st.adam.m.push_back(torch::zeros_like(p));
    st.adam.v.push_back(torch::zeros_like(p));
  }
  st.since_fired = torch::zeros({cfg.d_sae}, torch::TensorOptions().dtype(torch::kLong).device(device));
  st.rng = opt.seed ^ 0xA11CEull;
  return st;
}

void sae_train_init(SaeTrainState& st, const TrainOptions& opt, const at::Tensor& x0) {
  torch::NoGradGuard ng;
  Sae& sae = st.sae;
  if (opt.normalize_activations) {
    const double mean_norm = x0.norm(2, 1).mean().item<double>();
    if (mean_norm > 0) sae.mutable_config().act_scale = std::sqrt(static_cast<double>(sae.config().d_in)) / mean_norm;
  }
  sae.b_dec = (x0.mean(0) * sae.config().act_scale).to(sae.b_dec.scalar_type());
}

void sae_train_step(SaeTrainState& st, const TrainOptions& opt, int64_t total_steps, const at::Tensor& x,
                    SaeStepStats& acc, const std::function<void(const std::string&)>& log) {
  torch::AutoGradMode enable_grad(true);
  Sae& sae = st.sae;
  for (auto* p : {&sae.W_enc, &sae.b_enc, &sae.W_dec, &sae.b_dec})
    if (!p->requires_grad()) p->requires_grad_(true);
  SaeAdam& adam = st.adam;
  at::Tensor& since_fired = st.since_fired;
  double& th_ema = st.th_ema;
  uint64_t& rng = st.rng;
  const int64_t step = st.step;
  const SaeArch arch = sae.config().arch;
  const int64_t N = x.size(0);
  const int64_t d_in = sae.config().d_in;
  const int64_t aux_k = opt.aux_k > 0 ? opt.aux_k : std::max<int64_t>(1, d_in / 2);
  const double scale = sae.config().act_scale;
  const int64_t warm_steps = std::max<int64_t>(1, static_cast<int64_t>(opt.lr_warmup_frac * total_steps));
  const int64_t decay_start = total_steps - static_cast<int64_t>(opt.lr_decay_frac * total_steps);
  const int64_t l1_warm = std::max<int64_t>(1, static_cast<int64_t>(opt.l1_warmup_frac * total_steps));
  const int64_t resample_every = std::max<int64_t>(1, opt.dead_after_tokens / N);
  const double eps = 1e-8;

  const double frac = static_cast<double>(step) / total_steps;
  double lr = opt.lr;
  if (step < warm_steps) lr *= static_cast<double>(step + 1) / warm_steps;
  if (step >= decay_start) lr *= static_cast<double>(total_steps - step) / std::max<int64_t>(1, total_steps - decay_start);

  // ---- forward and loss (in normalised units: x * act_scale) ----
  // TopK codes stay sparse, as their latents and values [N,k]; the other architectures' codes f
  // are dense [N,S].
  const at::Tensor xs = scale != 1.0 ? x * scale : x;  // [N,D]
  auto pre = train_pre_activation(sae, xs);             // [N,S]
  at::Tensor f, top_idx, top_val, dec;
  if (arch == SaeArch::TopK) {
    auto top = torch::topk(pre, sae.config().k, -1, /*largest=*/true, /*sorted=*/false);
    top_idx = std::get<1>(top);
    top_val = torch::relu(std::get<0>(top));
    dec = sparse_decode(sae.W_dec, top_idx, top_val);
  } else {
    f = sae.activate(pre, /*training=*/true);
    dec = torch::matmul(f, sae.W_dec);
  }
  auto err = dec + sae.b_dec - xs;  // [N,D]: reconstruction error, normalised units
  auto mse = err.pow(2).sum(-1).mean();
  auto loss = mse;
  const at::Tensor dead = since_fired >= opt.dead_after_tokens;  // [S]
  if (arch == SaeArch::ReLU) {
    const double coeff = opt.l1_coeff * std::min(1.0, static_cast<double>(step + 1) / l1_warm);
    loss = loss + coeff * (f * sae.W_dec.norm(2, 1)).sum(-1).mean();
  } else {
    const int64_t n_dead = dead.sum().item<int64_t>();
    if (n_dead > 0 && opt.aux_k_coeff > 0) {
      // AuxK: the top dead latents model the residual the live ones leave (revives them).
      const int64_t ka = std::min(aux_k, n_dead);
      auto pre_dead = pre.masked_fill(dead.logical_not().unsqueeze(0), -std::numeric_limits<float>::infinity());
      auto top = torch::topk(pre_dead, ka, -1, /*largest=*/true, /*sorted=*/false);
      auto e_hat = sparse_decode(sae.W_dec, std::get<1>(top), torch::relu(std::get<0>(top)));  // [N,D], no bias
      auto e = -err.detach();
      const double s = std::min(1.0, static_cast<double>(n_dead) / ka);
      auto aux = (e_hat - e).pow(2).sum(-1).mean() / e.pow(2).sum(-1).mean().clamp_min(1e-12);
      loss = loss + opt.aux_k_coeff * s * aux;
    }
  }
  auto params = sae.parameters();
  auto grads = torch::autograd::grad({loss}, params);

  {
    torch::NoGradGuard ng;
    // Keep decoder rows on the unit sphere: drop the gradient's radial part, then renormalise.
    grads[2] = grads[2] - (grads[2] * sae.W_dec).sum(1, true) * sae.W_dec;
    ++adam.t;
    const double bc1 = 1 - std::pow(opt.adam_beta1, static_cast<double>(adam.t));
    const double bc2 = 1 - std::pow(opt.adam_beta2, static_cast<double>(adam.t));
    for (size_t i = 0; i < params.size(); ++i) {
      adam.m[i].mul_(opt.adam_beta1).add_(grads[i], 1 - opt.adam_beta1);
      adam.v[i].mul_(opt.adam_beta2).addcmul_(grads[i], grads[i], 1 - opt.adam_beta2);
      auto denom = (adam.v[i] / bc2).sqrt_().add_(eps);
      params[i].addcdiv_(adam.m[i], denom, -lr / bc1);
    }
    sae.W_dec.div_(sae.W_dec.norm(2, 1, true).clamp_min(1e-12));

    // Dead-latent bookkeeping: rows since each latent last fired.
    const at::Tensor active = f.defined() ? f > 0 : top_val > 0;  // [N,S] or [N,k]
    const at::Tensor fired = f.defined() ? active.any(0)
                                         : torch::zeros_like(since_fired, torch::kBool).index_fill_(0, top_idx.masked_select(active), true);
    since_fired.add_(N).masked_fill_(fired, 0);
    if (arch == SaeArch::BatchTopK) {
      // The inference threshold: running mean of the smallest activation the batch kept.
      auto kept = f.masked_select(f > 0);
      if (kept.numel() > 0) {
        const double mn = kept.min().item<double>();
        th_ema = (step == 0) ? mn : 0.99 * th_ema + 0.01 * mn;
        sae.threshold.fill_(th_ema);
      }
    }
    // ReLU revival (Anthropic, 2023 "Towards Monosemanticity"): dead latents restart as
    // directions of badly reconstructed inputs. TopK-style SAEs rely on AuxK instead.
    if (arch == SaeArch::ReLU && (step + 1) % resample_every == 0 && frac < 0.6) {
      auto dead_idx = (since_fired >= opt.dead_after_tokens).nonzero().flatten().to(torch::kCPU);
      const int64_t nd = dead_idx.numel();
      if (nd > 0) {
        auto e = err.detach().to(torch::kCPU);        // [N,D]
        auto w = e.pow(2).sum(-1).cumsum(0);            // sampling weights ∝ ||e||²
        const double tot = w[-1].item<double>();
        auto alive = (since_fired < opt.dead_after_tokens);
        const double enc_norm = alive.any().item<bool>()
                                    ? sae.W_enc.norm(2, 0).masked_select(alive).mean().item<double>()
                                    : 1.0;
        for (int64_t j = 0; j < nd; ++j) {
          const double u = (next_u64(rng) >> 11) * (1.0 / 9007199254740992.0) * tot;
          const int64_t row = std::min<int64_t>(N - 1, torch::searchsorted(w, torch::tensor({u}, torch::kFloat)).item<int64_t>());
          auto dir = e[row] / e[row].norm().clamp_min(1e-12);
          const int64_t li = dead_idx[j].item<int64_t>();
          sae.W_dec[li].copy_(dir.to(sae.W_dec.device()));
          sae.W_enc.select(1, li).copy_(dir.to(sae.W_enc.device()) * (0.2 * enc_norm));
          sae.b_enc[li].zero_();
          adam.m[0].select(1, li).zero_();
          adam.v[0].select(1, li).zero_();
          for (int i : {1, 2}) {
            adam.m[i][li].zero_();
            adam.v[i][li].zero_();
          }
        }
        since_fired.index_fill_(0, dead_idx.to(since_fired.device()), 0);
        log("step " + std::to_string(step + 1) + ": revived " + std::to_string(nd) + " dead latents");
      }
    }

    acc.loss += loss.item<double>();
    acc.l0 += active.sum(-1).to(torch::kDouble).mean().item<double>();
    acc.err += err.pow(2).sum().item<double>();
    acc.var += (xs - xs.mean(0)).pow(2).sum().item<double>();
    ++acc.n;
  }
  ++st.step;
}

TrainResult train_sae(const Model& model, const TrainOptions& opt_in) {
  torch::AutoGradMode enable_grad(true);  // callers may hold a NoGradGuard (the CLI does)
  TrainOptions opt = opt_in;
  auto log = opt.log ? opt.log : [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); };
  const SaeArch arch = opt.sae.arch;
  require(arch != SaeArch::JumpReLU, ErrorKind::Arg,
          "training JumpReLU SAEs is not supported (train relu, topk or batchtopk; batchtopk runs as a JumpReLU)");
  require(opt.sae.d_sae > 0, ErrorKind::Arg, "--d-sae must be positive");
  require(opt.total_tokens >= opt.data.batch_tokens, ErrorKind::Arg,
          "--tokens " + std::to_string(opt.total_tokens) + " is less than one batch of " + std::to_string(opt.data.batch_tokens));
  const int64_t d_in = sae_site_width(model, opt.sae.hook_name);

  opt.data.hook_name = opt.sae.hook_name;
  opt.data.seed = opt.seed;
  if (!opt.data.log) opt.data.log = log;
  ActivationStore store(model, opt.data);
  const int64_t N = opt.data.batch_tokens;
  const int64_t total_steps = opt.total_tokens / N;
  if (opt.total_tokens > store.corpus_tokens())
    log("note: corpus has " + std::to_string(store.corpus_tokens()) + " tokens, budget is " + std::to_string(opt.total_tokens) +
        ": about " + std::to_string((opt.total_tokens + store.corpus_tokens() - 1) / store.corpus_tokens()) + " epochs");

  SaeConfig cfg = opt.sae;
  cfg.d_in = d_in;
  cfg.dtype = torch::kFloat;
  cfg.metadata["model_name"] = model.path();
  cfg.metadata["dataset_path"] = opt.data.corpus;
  cfg.metadata["context_size"] = std::to_string(opt.data.ctx_len);
  SaeTrainState st = sae_train_state(cfg, opt, model.device());
  Sae& sae = st.sae;
  SaeAdam& adam = st.adam;
  at::Tensor& since_fired = st.since_fired;
  double& th_ema = st.th_ema;
  uint64_t& rng = st.rng;
  int64_t& step = st.step;

  const std::string ckpt_dir = opt.out_dir.empty() ? std::string() : join_path(opt.out_dir, "checkpoints");
  const std::string ckpt = ckpt_dir.empty() ? std::string() : join_path(ckpt_dir, "state.safetensors");
  const std::string fp = fingerprint(opt, d_in);

  auto save_checkpoint = [&]() {
    if (ckpt.empty()) return;
    std::error_code ec;
    std::filesystem::create_directories(ckpt_dir, ec);
    require(!ec, ErrorKind::Io, ckpt_dir + ": cannot create (" + ec.message() + ")");
    std::vector<std::pair<std::string, at::Tensor>> t;
    auto params = sae.parameters();
    for (size_t i = 0; i < params.size(); ++i) {
      t.emplace_back(std::string("sae.") + kParamNames[i], params[i].detach());
      t.emplace_back(std::string("adam.m.") + kParamNames[i], adam.m[i]);
      t.emplace_back(std::string("adam.v.") + kParamNames[i], adam.v[i]);
    }
    if (sae.threshold.defined()) t.emplace_back("sae.threshold", sae.threshold.detach());
    int64_t rng_bits;
    std::memcpy(&rng_bits, &rng, sizeof rng_bits);
    t.emplace_back("train.step", scalar_i(step));
    t.emplace_back("train.adam_t", scalar_i(adam.t));
    t.emplace_back("train.rng", scalar_i(rng_bits));
    t.emplace_back("train.since_fired", since_fired);
    t.emplace_back("train.act_scale", scalar_d(sae.config().act_scale));
    t.emplace_back("train.th_ema", scalar_d(th_ema));
    for (auto& kv : store.state()) t.emplace_back(kv.first, kv.second);
    // save_safetensors writes a temp file and renames it: a crash mid-write keeps the old one.
    save_safetensors(ckpt, t, {{"lumen_checkpoint", "sae-train-v1"}, {"run", fp}});
  };

  bool resumed = false;
  if (opt.resume && !ckpt.empty() && file_exists(ckpt)) {
    std::map<std::string, at::Tensor> st;
    std::string run;
    try {
      TensorStore ts = TensorStore::open(ckpt);
      for (auto& n : ts.names()) st[n] = ts.get(n).clone();
      auto it = ts.metadata().find("run");
      run = it == ts.metadata().end() ? "" : it->second;
    } catch (const Error& e) {
      throw Error(ErrorKind::Sae, ckpt + ": checkpoint is unreadable (" + std::string(e.what()) +
                                      "); delete it to start over, or drop --resume");
    }
    require(run == fp, ErrorKind::Sae,
            ckpt + ": checkpoint belongs to a different run (settings " + run + " vs " + fp + "); use another --out or drop --resume");
    auto get = [&](const std::string& k) {
      auto it = st.find(k);
      require(it != st.end(), ErrorKind::Sae, ckpt + ": checkpoint lacks '" + k + "' (corrupt or not an SAE checkpoint)");
      return it->second.to(model.device());
    };
    sae.mutable_config().act_scale = get("train.act_scale").item<double>();
    std::map<std::string, at::Tensor> w;
    for (const char* n : kParamNames) w[n] = get(std::string("sae.") + n);
    if (st.count("sae.threshold")) w["threshold"] = get("sae.threshold");
    sae = Sae::from_tensors(sae.config(), w, ckpt, model.device());
    auto params = sae.parameters();
    for (size_t i = 0; i < params.size(); ++i) {
      adam.m[i] = get(std::string("adam.m.") + kParamNames[i]);
      adam.v[i] = get(std::string("adam.v.") + kParamNames[i]);
      require(adam.m[i].sizes() == params[i].sizes() && adam.v[i].sizes() == params[i].sizes(), ErrorKind::Sae,
              ckpt + ": optimizer state shapes do not match the SAE (corrupt checkpoint?)");
    }
    step = get("train.step").item<int64_t>();
    adam.t = get("train.adam_t").item<int64_t>();
    const int64_t rng_bits = get("train.rng").item<int64_t>();
    std::memcpy(&rng, &rng_bits, sizeof rng);
    since_fired = get("train.since_fired");
    th_ema = get("train.th_ema").item<double>();
    store.load_state(st, ckpt);
    resumed = true;
    log("resumed from " + ckpt + " at step " + std::to_string(step) + "/" + std::to_string(total_steps));
  } else if (opt.resume) {
    log("no checkpoint at " + (ckpt.empty() ? std::string("(no --out)") : ckpt) + "; starting a fresh run");
  }

  at::Tensor x_next;  // a batch drawn before the loop (fresh runs use it for initialisation)
  if (!resumed) {
    x_next = store.next_batch();  // [N,D]
    sae_train_init(st, opt, x_next);
  }

  SaeStepStats acc;
  auto t0 = std::chrono::steady_clock::now();
  int64_t tokens_since_log = 0;
  TrainResult res;

  while (step < total_steps) {
    at::Tensor x = x_next.defined() ? x_next : store.next_batch();  // [N,D]
    x_next = at::Tensor();
    sae_train_step(st, opt, total_steps, x, acc, log);
    tokens_since_log += N;

    const bool last = step == total_steps;
    if (step % opt.log_every == 0 || last) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double dead_share = (since_fired >= opt.dead_after_tokens).to(torch::kDouble).mean().item<double>();
      char line[256];
      std::snprintf(line, sizeof line, "step %lld/%lld  tokens %lld  %.0f tok/s  loss %.4f  L0 %.1f  FVU %.4f  dead %.1f%%",
                    static_cast<long long>(step), static_cast<long long>(total_steps), static_cast<long long>(step * N),
                    secs > 0 ? tokens_since_log / secs : 0.0, acc.loss / acc.n, acc.l0 / acc.n, acc.err / std::max(acc.var, 1e-12),
                    100 * dead_share);
      log(line);
      res.final_loss = acc.loss / acc.n;
      res.final_l0 = acc.l0 / acc.n;
      res.final_fvu = acc.err / std::max(acc.var, 1e-12);
      res.dead_fraction = dead_share;
      acc = SaeStepStats();
      tokens_since_log = 0;
      t0 = std::chrono::steady_clock::now();
    }
    const bool stop_now = opt.stop_after_steps >= 0 && step >= opt.stop_after_steps && !last;
    if ((opt.checkpoint_every > 0 && step % opt.checkpoint_every == 0) || last || stop_now) save_checkpoint();
    if (stop_now) {
      res.finished = false;
      break;
    }
  }

  for (auto* p : {&sae.W_enc, &sae.b_enc, &sae.W_dec, &sae.b_dec}) *p = p->detach();
  res.steps = step;
  res.tokens = step * N;
  if (res.finished && !opt.out_dir.empty()) {
    save_saelens(sae, opt.out_dir);
    log("saved " + opt.out_dir + " (SAELens format)");
  }
  res.sae = sae;
  return res;
}

}  // namespace lumen
