// SAE evaluation on held-out text: sparsity (L0, dead and dense latents), reconstruction (MSE,
// FVU) and the downstream cost of splicing it in (CE loss clean / spliced / zero-ablated).
#include <torch/torch.h>

#include "lumen/error.h"
#include "lumen/sae.h"

namespace lumen {
namespace {

// Mean next-token cross-entropy over a batch, and how many predictions it averaged.
double ce_sum(const at::Tensor& logits, const at::Tensor& tokens) {
  const int64_t V = logits.size(-1);
  auto lg = logits.narrow(1, 0, logits.size(1) - 1).reshape({-1, V}).to(torch::kFloat);
  auto tg = tokens.narrow(1, 1, tokens.size(1) - 1).reshape({-1}).to(lg.device());
  return torch::nn::functional::cross_entropy(lg, tg, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
      .item<double>();
}

RunOptions with_hooks(HookSet* h) {
  RunOptions ro;
  ro.hooks = h;
  return ro;
}

}  // namespace

EvalResult evaluate_sae(const Model& model, const Sae& sae, const EvalOptions& opt) {
  check_sae_fits(sae, model);
  torch::NoGradGuard ng;
  const std::string hook = sae.config().hook_name;
  const int64_t ctx = std::min<int64_t>(opt.ctx_len, model.config().n_ctx);
  at::Tensor windows = tokenize_corpus(model, opt.corpus, ctx, opt.text_field, opt.tokens);  // [W,ctx]
  const Tokenizer& tok = model.require_tokenizer();
  const int64_t bos = tok.bos_id() >= 0 ? tok.bos_id() : tok.eos_id();
  const int64_t S = sae.config().d_sae, D = sae.config().d_in;

  double n_rows = 0, sum_l0 = 0, sum_err = 0, sum_x2 = 0;
  at::Tensor sum_x = torch::zeros({D}, torch::kDouble);
  at::Tensor fires = torch::zeros({S}, torch::kDouble);
  double ce_clean = 0, ce_spliced = 0, ce_ablated = 0, n_pred = 0;

  for (int64_t w0 = 0; w0 < windows.size(0); w0 += opt.batch) {
    const int64_t b = std::min<int64_t>(opt.batch, windows.size(0) - w0);
    auto tokens = windows.narrow(0, w0, b).to(model.device());  // [b,ctx]
    // The SAE was trained without BOS positions; those keep their activation in every run.
    auto keep = bos >= 0 ? tokens.ne(bos) : torch::ones_like(tokens, torch::kBool);  // [b,ctx]
    n_pred += static_cast<double>(b * (ctx - 1));

    HookSet clean;
    clean.cache(hook);
    ce_clean += ce_sum(model.forward(tokens, with_hooks(&clean)), tokens);
    const at::Tensor x_site = clean.get(hook);
    auto x = x_site.reshape({b, ctx, -1}).to(torch::kFloat);                 // [b,ctx,D]
    auto rows = x.reshape({-1, D}).index({keep.reshape({-1}).to(x.device())});  // [n,D]
    auto f = sae.encode(rows);                                               // [n,S]
    auto recons = sae.decode(f).to(torch::kFloat);
    n_rows += static_cast<double>(rows.size(0));
    sum_l0 += (f > 0).sum().item<double>();
    sum_err += (recons - rows).pow(2).sum().item<double>();
    sum_x2 += rows.to(torch::kDouble).pow(2).sum().item<double>();
    sum_x += rows.to(torch::kDouble).sum(0).to(torch::kCPU);
    fires += (f > 0).to(torch::kDouble).sum(0).to(torch::kCPU);

    auto mask_like = [&](const at::Tensor& site) {
      std::vector<int64_t> shape(site.dim(), 1);
      shape[0] = b;
      shape[1] = ctx;
      return keep.view(shape).to(site.device());
    };
    HookSet spliced;
    spliced.hook(hook, [&](const at::Tensor& s, const HookContext&) {
      auto r = sae.forward(s.reshape({b, ctx, D})).to(s.scalar_type()).view(s.sizes());
      return torch::where(mask_like(s), r, s);
    });
    ce_spliced += ce_sum(model.forward(tokens, with_hooks(&spliced)), tokens);
    HookSet ablated;
    ablated.hook(hook, [&](const at::Tensor& s, const HookContext&) { return torch::where(mask_like(s), torch::zeros_like(s), s); });
    ce_ablated += ce_sum(model.forward(tokens, with_hooks(&ablated)), tokens);
  }

  EvalResult r;
  r.tokens = static_cast<int64_t>(n_rows);
  require(n_rows > 0, ErrorKind::Arg, opt.corpus + ": no evaluation tokens");
  const double var = sum_x2 - sum_x.pow(2).sum().item<double>() / n_rows;
  r.l0 = sum_l0 / n_rows;
  r.mse = sum_err / (n_rows * D);
  r.fvu = sum_err / std::max(var, 1e-30);
  r.ce_loss_clean = ce_clean / n_pred;
  r.ce_loss_spliced = ce_spliced / n_pred;
  r.ce_loss_ablated = ce_ablated / n_pred;
  const double gap = r.ce_loss_ablated - r.ce_loss_clean;
  r.ce_loss_recovered = gap != 0 ? (r.ce_loss_ablated - r.ce_loss_spliced) / gap : 1.0;
  auto rate = fires / n_rows;
  r.dead_fraction = (fires == 0).to(torch::kDouble).mean().item<double>();
  r.dense_fraction = (rate > opt.dense_threshold).to(torch::kDouble).mean().item<double>();
  return r;
}

}  // namespace lumen
