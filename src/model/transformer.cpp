// The forward pass. One block implementation reads ModelConfig's axes; every hook site is one
// line `x = hook(site, layer, x)`. Shapes: B batch, T positions in this call, Tk keys (cache +
// this call), D d_model, H heads, K kv heads, G = H/K, E head_dim, F d_mlp, V vocab.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <tuple>
#include <utility>

#include "lumen/error.h"
#include "base/gemv.h"
#include "base/swiglu.h"
#include "model/impl.h"

namespace lumen {
namespace {

// Fused float32 CPU kernels for the element-wise steps. As separate torch ops, RMSNorm is six
// passes (and six dispatches) and RoPE nine; during decode those dispatches cost more than the
// arithmetic. Used only when no gradient is being recorded; autograd takes the torch-op path.
// They stay on torch's pool (often one thread here): running them on gemv's helper thread as well
// made the 110M 8x128 prefill ~10% slower, the helper contending with OpenBLAS's spinning workers.
bool fusable(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.device().type() != torch::kCPU || a.scalar_type() != torch::kFloat || b.scalar_type() != torch::kFloat)
    return false;
  return !(at::GradMode::is_enabled() && (a.requires_grad() || b.requires_grad()));
}

// y = x * rsqrt(mean(x^2) + eps) * w over the last axis; x contiguous.
torch::Tensor rms_norm_cpu(const torch::Tensor& x_in, const torch::Tensor& w_in, double eps) {
  const auto x = x_in.contiguous();
  const auto w = w_in.contiguous();
  auto y = torch::empty_like(x);
  const int64_t D = x.size(-1), rows = x.numel() / D;
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * D;
      float* yr = yp + r * D;
      float ss = 0.f;
      for (int64_t j = 0; j < D; ++j) ss += xr[j] * xr[j];
      const float inv = 1.f / std::sqrt(ss / static_cast<float>(D) + static_cast<float>(eps));
      for (int64_t j = 0; j < D; ++j) yr[j] = xr[j] * inv * wp[j];
    }
  });
  return y;
}

// y = x * cos + partner(x) * sin with rope_tables' full-width signed tables: x [B,T,N,E];
// cos, sin [B|1,T,1,E]. The partner of dim j is j +- E/2 (rotate-half) or j ^ 1 (interleaved).
torch::Tensor rope_cpu(const torch::Tensor& x_in, const torch::Tensor& cos_in, const torch::Tensor& sin_in,
                       bool rotate_half) {
  const auto x = x_in.contiguous();
  const auto cs = cos_in.contiguous(), sn = sin_in.contiguous();
  auto y = torch::empty_like(x);
  const int64_t B = x.size(0), T = x.size(1), N = x.size(2), E = x.size(3), half = E / 2;
  const int64_t cb = cs.size(0) == 1 ? 0 : T * E;  // table stride per batch row
  const float* xp = x.data_ptr<float>();
  const float* cp = cs.data_ptr<float>();
  const float* sp = sn.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, B * T, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t bt = i0; bt < i1; ++bt) {
      const int64_t b = bt / T, t = bt % T;
      const float* c = cp + b * cb + t * E;
      const float* s = sp + b * cb + t * E;
      for (int64_t n = 0; n < N; ++n) {
        const float* xr = xp + (bt * N + n) * E;
        float* yr = yp + (bt * N + n) * E;
        for (int64_t j = 0; j < E; ++j) {
          const int64_t pj = rotate_half ? (j < half ? j + half : j - half) : (j ^ 1);
          yr[j] = xr[j] * c[j] + xr[pj] * s[j];
        }
      }
    }
  });
  return y;
}

// One query per row (decoding), attention core in one pass: z[b,h] = softmax(scale q.k_j (soft-
// capped, hidden keys at -inf)) . v_j over the cached keys j < Tk. As torch ops this is about a dozen
// dispatches per layer, which cost more than its arithmetic at T = 1. q [B,1,H,E] contiguous;
// k, v [B,K,cap,E] (rows contiguous); hidden [B|1,1,1,Tk] bool or undefined. Returns z [B,1,H,E].
torch::Tensor attend_one_cpu(const torch::Tensor& q_in, const torch::Tensor& k, const torch::Tensor& v, int64_t Tk,
                             double scale, double softcap, const torch::Tensor& hidden_in) {
  const auto q = q_in.contiguous();
  const int64_t B = q.size(0), H = q.size(2), E = q.size(3), K = k.size(1), G = H / K;
  auto z = torch::empty_like(q);
  const torch::Tensor hidden = hidden_in.defined() ? hidden_in.contiguous() : hidden_in;
  const bool* hp = hidden.defined() ? hidden.data_ptr<bool>() : nullptr;
  const int64_t hb = hidden.defined() && hidden.size(0) > 1 ? Tk : 0;  // mask stride per batch row
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* zp = z.data_ptr<float>();
  const int64_t ks0 = k.stride(0), ks1 = k.stride(1), ks2 = k.stride(2);
  const int64_t vs0 = v.stride(0), vs1 = v.stride(1), vs2 = v.stride(2);
  // Parallel over (b, h) only when there is enough work to pay for waking a thread.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, Tk * E));
  at::parallel_for(0, B * H, grain, [&](int64_t i0, int64_t i1) {
    std::vector<float> p(Tk);
    for (int64_t bh = i0; bh < i1; ++bh) {
      const int64_t b = bh / H, h = bh % H, kv = h / G;
      const float* qr = qp + bh * E;
      const float* kb = kp + b * ks0 + kv * ks1;
      const float* vb = vp + b * vs0 + kv * vs1;
      const bool* hr = hp ? hp + b * hb : nullptr;
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < Tk; ++j) {
        if (hr && hr[j]) {
          p[j] = -std::numeric_limits<float>::infinity();
          continue;
        }
        const float* kr = kb + j * ks2;
        float d = 0.f;
        for (int64_t e = 0; e < E; ++e) d += qr[e] * kr[e];
        d *= static_cast<float>(scale);
        if (softcap > 0) d = static_cast<float>(std::tanh(d / softcap) * softcap);
        p[j] = d;
        mx = std::max(mx, d);
      }
      float sum = 0.f;
      for (int64_t j = 0; j < Tk; ++j) sum += (p[j] = std::exp(p[j] - mx));
      const float inv = 1.f / sum;
      float* zr = zp + bh * E;
      for (int64_t e = 0; e < E; ++e) zr[e] = 0.f;
      for (int64_t j = 0; j < Tk; ++j) {
        const float w = p[j] * inv;
        if (w == 0.f) continue;
        const float* vr = vb + j * vs2;
        for (int64_t e = 0; e < E; ++e) zr[e] += w * vr[e];
      }
    }
  });
  return z;
}

// silu(gate) * up in one pass (SwiGLU); gate, up contiguous, same shape.
torch::Tensor swiglu_cpu(const torch::Tensor& gate_in, const torch::Tensor& up_in) {
  const auto g = gate_in.contiguous(), u = up_in.contiguous();
  auto y = torch::empty_like(g);
  const float* gp = g.data_ptr<float>();
  const float* up = u.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, g.numel(), 1 << 15, [&](int64_t i0, int64_t i1) {
    swiglu_rows(gp + i0, up + i0, yp + i0, i1 - i0);
  });
  return y;
}

// Calls into the hook set only where something is registered.
struct Hooks {
  HookSet* set;
  int64_t pos_offset;
  torch::Tensor operator()(HookSite site, int layer, const torch::Tensor& x) const {
    if (!set) return x;
    const HookPoint p{site, layer};
    return set->active(p) ? set->apply(p, x, pos_offset) : x;
  }
};

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  if (fusable(x, w)) return rms_norm_cpu(x, w, eps);
  if (x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kDouble)
    return x * torch::rsqrt(x.pow(2).mean(-1, true) + eps) * w;
  // Half precision: normalise in float32, as HF does.
  auto xf = x.to(torch::kFloat);
  return (xf * torch::rsqrt(xf.pow(2).mean(-1, true) + eps)).to(x.scalar_type()) * w;
}

torch::Tensor norm(const ModelConfig& c, const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  if (c.norm == NormKind::LayerNorm) return torch::layer_norm(x, {x.size(-1)}, w, b, c.norm_eps);
  return rms_norm(x, w, c.norm_eps);  // (1 + w) was folded into w at load time
}

torch::Tensor activation(ActKind a, const torch::Tensor& x) {
  switch (a) {
    case ActKind::GeluTanh: return torch::gelu(x, "tanh");
    case ActKind::GeluErf: return torch::gelu(x);
    case ActKind::Silu: return torch::silu(x);
    case ActKind::Relu: return torch::relu(x);
  }
  return x;
}

// One input row (decoding) goes through a matrix-vector product: it streams the weight once, where a
// GEMM with M = 1 is 2-6x slower on the same weights (measured in bench/). Without autograd on a
// float32 CPU tensor it runs on lumen's two-thread gemv (base/gemv.h), which never waits for a
// descheduled worker; otherwise on torch::mv.
torch::Tensor project(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b = {}) {
  if (x.numel() == x.size(-1)) {
    auto shape = x.sizes().vec();
    shape.back() = w.size(0);
    torch::Tensor y;
    if (fusable(x, w) && w.is_contiguous()) {
      const auto xc = x.contiguous();
      y = torch::empty({w.size(0)}, x.options());
      gemv_rows(w.data_ptr<float>(), xc.data_ptr<float>(), y.data_ptr<float>(), w.size(0), w.size(1));
    } else {
      y = torch::mv(w, x.reshape({-1}));
    }
    if (b.defined()) y = y + b;
    return y.view(shape);
  }
  return b.defined() ? torch::linear(x, w, b) : torch::linear(x, w);
}

// RoPE as x * cos + partner(x) * sin over the full head width, where partner(x) puts each dim's
// rotation partner in its place and the tables carry the sign: for a pair (a, b) rotated by angle t,
// (a cos t + b (-sin t), b cos t + a sin t). Bit-identical to rotating the halves separately, in
// four full-width ops instead of eight strided ones (3x faster on a [512,13,8,8] query).
// cos, sin [B|1, T, 1, E/2] -> the tables [B|1, T, 1, E] for `style`.
std::pair<torch::Tensor, torch::Tensor> rope_tables(const torch::Tensor& cos, const torch::Tensor& sin, RopeStyle style) {
  if (style == RopeStyle::RotateHalf)  // pairs (i, i + E/2)
    return {torch::cat({cos, cos}, -1), torch::cat({-sin, sin}, -1)};
  return {torch::stack({cos, cos}, -1).flatten(-2), torch::stack({-sin, sin}, -1).flatten(-2)};  // pairs (2i, 2i+1)
}

// x [B,T,N,E]; cos, sin [B|1, T, 1, E] from rope_tables.
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, RopeStyle style) {
  if (fusable(x, cos)) return rope_cpu(x, cos, sin, style == RopeStyle::RotateHalf);
  const int64_t half = x.size(-1) / 2;
  const torch::Tensor partner = style == RopeStyle::RotateHalf
                                    ? torch::cat({x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1)
                                    : x.unflatten(-1, {half, 2}).flip(-1).flatten(-2);
  return x * cos + partner * sin;
}

// Which keys each query sees: [B|1, 1, T, Tk] bool, or undefined when every key is visible.
torch::Tensor attention_mask(int64_t T, int64_t p0, int64_t Tk, int64_t window, const torch::Tensor& key_valid,
                             torch::Device dev) {
  const bool causal_trivial = (T == 1);  // a single new query sees every earlier key
  const bool window_trivial = window <= 0 || Tk <= window;
  if (causal_trivial && window_trivial && !key_valid.defined()) return {};
  auto opts = torch::TensorOptions().dtype(torch::kLong).device(dev);
  auto q = torch::arange(p0, p0 + T, opts).unsqueeze(1);  // [T,1]
  auto k = torch::arange(0, Tk, opts).unsqueeze(0);       // [1,Tk]
  auto m = k <= q;
  if (window > 0) m = m & (k > q - window);
  m = m.view({1, 1, T, Tk});
  if (key_valid.defined()) {
    const int64_t B = key_valid.size(0);
    // Padded keys are hidden; a padded query still sees itself so its softmax stays finite.
    m = (m & key_valid.to(torch::kBool).view({B, 1, 1, Tk})) | (k == q).view({1, 1, T, Tk});
  }
  return m;
}

}  // namespace

at::Tensor Model::forward(const at::Tensor& tokens_in, const RunOptions& opt) const {
  const Impl& m = *impl_;
  const ModelConfig& c = m.cfg;
  torch::Tensor x;
  int64_t B, T;
  if (opt.input_embeds.defined()) {
    require(opt.input_embeds.dim() == 3 && opt.input_embeds.size(2) == c.d_model, ErrorKind::Shape,
            "input_embeds must be [B,T," + std::to_string(c.d_model) + "]");
    x = opt.input_embeds.to(m.device, m.dtype);
    B = x.size(0);
    T = x.size(1);
  } else {
    require(tokens_in.dim() == 2, ErrorKind::Shape, "tokens must be [B,T] int64, got " + std::to_string(tokens_in.dim()) + " dims");
    B = tokens_in.size(0);
    T = tokens_in.size(1);
    auto tokens = tokens_in.to(m.device, torch::kLong);
    if (tokens.numel() > 0) {
      int64_t lo = 0, hi = 0;
      if (tokens.device().is_cpu()) {  // a plain loop: two reductions cost more than the decode step's arithmetic
        const auto t = tokens.contiguous();
        const int64_t* p = t.data_ptr<int64_t>();
        lo = hi = p[0];
        for (int64_t i = 1; i < t.numel(); ++i) lo = std::min(lo, p[i]), hi = std::max(hi, p[i]);
      } else {
        auto mm = torch::aminmax(tokens);
        lo = std::get<0>(mm).item<int64_t>(), hi = std::get<1>(mm).item<int64_t>();
      }
      require(lo >= 0 && hi < c.d_vocab, ErrorKind::Arg,
              "token id " + std::to_string(lo < 0 ? lo : hi) + " is outside the vocabulary [0," + std::to_string(c.d_vocab) + ")");
    }
    x = torch::embedding(m.w_embed, tokens);
  }
  require(T > 0, ErrorKind::Arg, "empty input: at least one token is needed");

  // Positions, padding and cache bookkeeping.
  KVCache* cache = opt.cache;
  const int64_t p0 = cache ? cache->length : 0;
  const int64_t Tk = p0 + T;
  require(Tk <= c.n_ctx, ErrorKind::Arg,
          "sequence of " + std::to_string(Tk) + " tokens exceeds the model's context of " + std::to_string(c.n_ctx));
  torch::Tensor positions;  // [B,T] int64, only when rows are padded
  torch::Tensor key_valid;  // [B,Tk] bool, only when rows are padded
  if (cache) {
    require(cache->k.size() == static_cast<size_t>(c.n_layers) && Tk <= cache->capacity && cache->k[0].size(0) == B,
            ErrorKind::Arg, "KV cache too small or for another batch: capacity " + std::to_string(cache->capacity) +
                                ", need " + std::to_string(Tk));
    if (opt.attention_mask.defined() && p0 == 0) {
      auto mask = opt.attention_mask.to(m.device, torch::kBool);
      cache->key_valid.narrow(1, 0, T).copy_(mask);
      cache->padded = !mask.all().item<bool>();
      positions = (mask.to(torch::kLong).cumsum(1) - 1).clamp_min(0);
      cache->next_pos = positions.select(1, T - 1) + 1;
    } else {
      cache->key_valid.narrow(1, p0, T).fill_(true);
      if (cache->padded) positions = cache->next_pos.view({B, 1}) + torch::arange(T, cache->next_pos.options()).view({1, T});
      cache->next_pos = cache->next_pos + T;
    }
    if (cache->padded) key_valid = cache->key_valid.narrow(1, 0, Tk);
  } else if (opt.attention_mask.defined()) {
    key_valid = opt.attention_mask.to(m.device, torch::kBool);
    require(key_valid.sizes() == torch::IntArrayRef({B, T}), ErrorKind::Shape, "attention_mask must be [B,T]");
    positions = (key_valid.to(torch::kLong).cumsum(1) - 1).clamp_min(0);
  }

  const Hooks hook{opt.hooks, p0};
  if (opt.hooks) opt.hooks->bind(c.n_layers, c.pos == PosKind::Learned, c.mlp == MlpKind::Gated);

  if (c.embed_scale != 1.0) x = x * c.embed_scale;
  x = hook(HookSite::embed, -1, x);  // [B,T,D]
  if (c.pos == PosKind::Learned) {
    auto pe = positions.defined() ? torch::embedding(m.w_pos, positions)
                                  : m.w_pos.narrow(0, p0, T).unsqueeze(0).expand({B, T, c.d_model});
    pe = hook(HookSite::pos_embed, -1, pe);
    x = x + pe;
  }
  torch::Tensor cos, sin;  // [B|1, T, 1, E]
  if (c.pos == PosKind::Rotary) {
    const int64_t half = c.d_head / 2;
    if (positions.defined()) {
      cos = torch::embedding(m.rope_cos, positions).view({B, T, 1, half});
      sin = torch::embedding(m.rope_sin, positions).view({B, T, 1, half});
    } else {
      cos = m.rope_cos.narrow(0, p0, T).view({1, T, 1, half});
      sin = m.rope_sin.narrow(0, p0, T).view({1, T, 1, half});
    }
    std::tie(cos, sin) = rope_tables(cos, sin, c.rope_style);
  }
  // Hidden keys (true = masked out), computed once for every layer.
  auto hidden = [](const torch::Tensor& visible) { return visible.defined() ? visible.logical_not() : visible; };
  const torch::Tensor hidden_global = hidden(attention_mask(T, p0, Tk, 0, key_valid, m.device));
  const torch::Tensor hidden_sliding =
      c.sliding_window > 0 ? hidden(attention_mask(T, p0, Tk, c.sliding_window, key_valid, m.device)) : torch::Tensor();

  const int64_t H = c.n_heads, K = c.n_kv_heads, G = H / K, E = c.d_head;
  const int64_t n_run = opt.stop_at_layer >= 0 ? std::min<int64_t>(opt.stop_at_layer, c.n_layers) : c.n_layers;
  for (int64_t l = 0; l < n_run; ++l) {
    const LayerWeights& w = m.layers[l];
    const int li = static_cast<int>(l);
    x = hook(HookSite::resid_pre, li, x);

    // ---- attention ----
    auto a_in = hook(HookSite::ln1, li, norm(c, x, w.ln1_w, w.ln1_b));
    auto q = project(a_in, w.wq, w.bq).view({B, T, H, E});
    auto k = project(a_in, w.wk, w.bk).view({B, T, K, E});
    auto v = project(a_in, w.wv, w.bv).view({B, T, K, E});
    if (c.pos == PosKind::Rotary) {
      q = apply_rope(q, cos, sin, c.rope_style);
      k = apply_rope(k, cos, sin, c.rope_style);
    }
    q = hook(HookSite::attn_q, li, q);
    k = hook(HookSite::attn_k, li, k);
    v = hook(HookSite::attn_v, li, v);
    torch::Tensor k_all, v_all;  // [B,K,Tk,E]
    if (cache) {
      cache->k[l].narrow(2, p0, T).copy_(k.transpose(1, 2));
      cache->v[l].narrow(2, p0, T).copy_(v.transpose(1, 2));
      k_all = cache->k[l].narrow(2, 0, Tk);
      v_all = cache->v[l].narrow(2, 0, Tk);
    } else {
      k_all = k.transpose(1, 2);
      v_all = v.transpose(1, 2);
    }
    const torch::Tensor& masked = c.layer_slides(l) ? hidden_sliding : hidden_global;
    torch::Tensor z;
    const bool scores_hooked = opt.hooks && (opt.hooks->active({HookSite::attn_scores, li}) ||
                                             opt.hooks->active({HookSite::attn_pattern, li}));
    if (T == 1 && cache && !scores_hooked && fusable(q, k_all) && fusable(q, v_all)) {
      z = attend_one_cpu(q, cache->k[l], cache->v[l], Tk, c.attn_scale, c.attn_softcap, masked);
    } else {
      // Query heads h = kv*G + g share kv head `kv`: fold (G, T) into one axis so one batched
      // matmul per kv head serves all its query heads without copying keys.
      auto qg = (q * c.attn_scale).transpose(1, 2).reshape({B, K, G * T, E});
      auto scores = torch::matmul(qg, k_all.transpose(-1, -2)).view({B, H, T, Tk});
      if (c.attn_softcap > 0) scores = torch::tanh(scores / c.attn_softcap) * c.attn_softcap;
      // In place: the scores are a fresh product (or soft-cap output) that no backward pass reads.
      if (masked.defined()) scores.masked_fill_(masked, -std::numeric_limits<float>::infinity());
      scores = hook(HookSite::attn_scores, li, scores);
      auto pattern = scores.scalar_type() == torch::kFloat || scores.scalar_type() == torch::kDouble
                         ? torch::softmax(scores, -1)
                         : torch::softmax(scores, -1, torch::kFloat).to(scores.scalar_type());
      pattern = hook(HookSite::attn_pattern, li, pattern);  // [B,H,T,Tk]
      z = torch::matmul(pattern.reshape({B, K, G * T, Tk}), v_all).view({B, H, T, E}).transpose(1, 2);
    }
    z = hook(HookSite::attn_z, li, z);  // [B,T,H,E]
    auto attn = project(z.reshape({B, T, H * E}), w.wo, w.bo);
    if (c.sandwich_norms) attn = rms_norm(attn, w.post_attn_w, c.norm_eps);
    attn = hook(HookSite::attn_out, li, attn);
    x = hook(HookSite::resid_mid, li, x + attn);

    // ---- MLP ----
    auto m_in = hook(HookSite::ln2, li, norm(c, x, w.ln2_w, w.ln2_b));
    torch::Tensor post;
    if (c.mlp == MlpKind::Gated) {
      auto gate = hook(HookSite::mlp_pre, li, project(m_in, w.w_in, w.b_in));
      auto up = hook(HookSite::mlp_pre_linear, li, project(m_in, w.w_up));
      post = c.act == ActKind::Silu && fusable(gate, up) ? swiglu_cpu(gate, up) : activation(c.act, gate) * up;
    } else {
      post = activation(c.act, hook(HookSite::mlp_pre, li, project(m_in, w.w_in, w.b_in)));
    }
    post = hook(HookSite::mlp_post, li, post);  // [B,T,F]
    auto mlp = project(post, w.w_out, w.b_out);
    if (c.sandwich_norms) mlp = rms_norm(mlp, w.post_mlp_w, c.norm_eps);
    mlp = hook(HookSite::mlp_out, li, mlp);
    x = hook(HookSite::resid_post, li, x + mlp);
  }
  if (cache) cache->length = Tk;
  if (opt.stop_at_layer >= 0) return x;

  x = hook(HookSite::ln_final, -1, norm(c, x, m.lnf_w, m.lnf_b));
  auto logits = project(x, m.w_unembed);  // [B,T,V]
  if (c.final_softcap > 0) logits = torch::tanh(logits / c.final_softcap) * c.final_softcap;
  return logits;
}

at::Tensor Model::embed_tokens(const at::Tensor& tokens) const {
  return torch::embedding(impl_->w_embed, tokens.to(impl_->device, torch::kLong));
}

at::Tensor Model::embed_one_hot(const at::Tensor& one_hot) const {
  require(one_hot.dim() == 3 && one_hot.size(2) == impl_->cfg.d_vocab, ErrorKind::Shape,
          "one-hot input must be [B,T," + std::to_string(impl_->cfg.d_vocab) + "]");
  return torch::matmul(one_hot.to(impl_->dtype), impl_->w_embed);
}

at::Tensor Model::unembed_matrix() const { return impl_->w_unembed; }

KVCache Model::new_cache(int64_t batch, int64_t capacity) const {
  const ModelConfig& c = impl_->cfg;
  require(capacity > 0 && capacity <= c.n_ctx, ErrorKind::Arg,
          "KV cache capacity " + std::to_string(capacity) + " must be in [1, n_ctx=" + std::to_string(c.n_ctx) + "]");
  KVCache kv;
  auto opts = torch::TensorOptions().dtype(impl_->dtype).device(impl_->device);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    kv.k.push_back(torch::zeros({batch, c.n_kv_heads, capacity, c.d_head}, opts));
    kv.v.push_back(torch::zeros({batch, c.n_kv_heads, capacity, c.d_head}, opts));
  }
  kv.key_valid = torch::zeros({batch, capacity}, opts.dtype(torch::kBool));
  kv.next_pos = torch::zeros({batch}, opts.dtype(torch::kLong));
  kv.capacity = capacity;
  return kv;
}

at::Tensor tokens_tensor(const std::vector<int32_t>& ids, c10::Device device) {
  auto t = torch::empty({1, static_cast<int64_t>(ids.size())}, torch::kLong);
  auto a = t.accessor<int64_t, 2>();
  for (size_t i = 0; i < ids.size(); ++i) a[0][i] = ids[i];
  return t.to(device);
}

}  // namespace lumen
