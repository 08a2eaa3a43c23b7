// Splicing an SAE into the forward pass: one callback at its hook point that runs the SAE and
// exposes features, reconstruction and error as named hook points of the same hook set.
#include <torch/torch.h>

#include "lumen/error.h"
#include "lumen/sae.h"

namespace lumen {

std::string sae_hook_acts(const std::string& hook) { return hook + ".sae.hook_acts"; }
std::string sae_hook_recons(const std::string& hook) { return hook + ".sae.hook_recons"; }
std::string sae_hook_error(const std::string& hook) { return hook + ".sae.hook_error"; }

void attach(HookSet& hooks, const Sae& sae, SpliceMode mode) {
  const SaeConfig& c = sae.config();
  require(HookPoint::parse(c.hook_name).has_value(), ErrorKind::Sae,
          "cannot attach an SAE at '" + c.hook_name + "': not a hook point name (e.g. blocks.2.hook_resid_post)");
  const std::string n_acts = sae_hook_acts(c.hook_name), n_recons = sae_hook_recons(c.hook_name),
                    n_err = sae_hook_error(c.hook_name);
  hooks.declare(n_acts).declare(n_recons).declare(n_err);
  // The callback is owned by this hook set's state; it must not outlive or be moved away from it.
  HookSet* hs = &hooks;
  hooks.hook(c.hook_name, [hs, sae, mode, n_acts, n_recons, n_err](const at::Tensor& site, const HookContext& ctx) -> at::Tensor {
    const int64_t d_in = sae.config().d_in;
    at::Tensor x = site;
    // Per-head sites [B,T,H,E] carry SAEs over the concatenated heads (SAELens hook_z).
    if (x.dim() == 4 && x.size(-1) != d_in && x.size(2) * x.size(3) == d_in) x = x.flatten(2);
    require(x.size(-1) == d_in, ErrorKind::Sae,
            "SAE at '" + ctx.name + "' has d_in " + std::to_string(d_in) + " but the site's width is " + std::to_string(x.size(-1)));
    const at::Tensor xs = x.to(sae.device(), sae.W_enc.scalar_type());  // the dtype boundary

    const at::Tensor acts0 = sae.encode(xs);                                 // [...,S]
    const at::Tensor acts = hs->apply_named(n_acts, ctx.layer, acts0, ctx.pos_offset);
    const at::Tensor recons0 = sae.decode(acts);                             // [...,D]
    const at::Tensor recons = hs->apply_named(n_recons, ctx.layer, recons0, ctx.pos_offset);
    // The reconstruction of the unpatched features: what the error is measured against.
    const at::Tensor clean = acts.is_same(acts0) ? recons0 : sae.decode(acts0);

    if (mode == SpliceMode::Replace) {
      // The error is reported (cache, watch) but does not enter the output in this mode.
      hs->apply_named(n_err, ctx.layer, (xs - clean).detach(), ctx.pos_offset);
      return recons.to(site.scalar_type()).view(site.sizes());
    }
    // With gradients on, the error gets its own copy of the SAE so that d(err)/dx = I - J while
    // nothing flows from the error back into hook_acts; features then see d(out)/d(acts) through
    // the decoder alone and the site sees an identity Jacobian overall.
    const bool graph = torch::GradMode::is_enabled() && (xs.requires_grad() || sae.W_enc.requires_grad());
    const at::Tensor err0 = graph ? xs - sae.decode(sae.encode(xs)) : xs - clean;
    const at::Tensor err = hs->apply_named(n_err, ctx.layer, err0, ctx.pos_offset);
    // out = recons + err, written as x + (changes made by patches) so that an unpatched splice
    // returns the activation bit for bit (recons0 + err0 can differ from x by rounding).
    const at::Tensor delta = (recons - clean.detach()) + (err - err0.detach());
    return site.detach() + delta.to(site.scalar_type()).view(site.sizes());
  });
}

}  // namespace lumen
