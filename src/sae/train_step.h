// One SAE optimisation step and a fresh run's initialisation: what train_sae runs, shared with
// bench/ so that the benchmark times exactly what training does. Private to src/sae and bench/.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "lumen/sae.h"

namespace lumen {

struct SaeAdam {
  std::vector<at::Tensor> m, v;  // moments, in Sae::parameters() order
  int64_t t = 0;
};

struct SaeTrainState {
  Sae sae;
  SaeAdam adam;
  at::Tensor since_fired;  // [S] int64: rows since each latent last fired
  double th_ema = 0.0;     // BatchTopK inference threshold
  uint64_t rng = 0;        // ReLU revival draws
  int64_t step = 0;
};

// Running sums of what the progress line reports.
struct SaeStepStats {
  double loss = 0, l0 = 0, err = 0, var = 0;
  int64_t n = 0;
};

// A fresh run's state: the SAE as Sae::init(cfg, opt.seed, device) makes it, Adam moments at
// zero, no latent dead, and the ReLU revival generator seeded from opt.seed.
SaeTrainState sae_train_state(const SaeConfig& cfg, const TrainOptions& opt, c10::Device device);

// The data-dependent start of a fresh run, from its first batch x0 [N, d_in]: act_scale so that
// E||x * act_scale|| = sqrt(d_in) (SAELens' expected_average_only_in; with
// opt.normalize_activations), then b_dec at the scaled data mean, so that the encoder starts from
// centred inputs. A resumed run skips this: its checkpoint holds both.
void sae_train_init(SaeTrainState& st, const TrainOptions& opt, const at::Tensor& x0);

// x [N, d_in] float32 on the SAE's device. Updates the weights, the optimizer and the dead-latent
// counters, then advances st.step. Runs with grad mode on and the SAE's parameters requiring grad
// (it sets both; callers detach the parameters when training ends).
void sae_train_step(SaeTrainState& st, const TrainOptions& opt, int64_t total_steps, const at::Tensor& x,
                    SaeStepStats& acc, const std::function<void(const std::string&)>& log);

}  // namespace lumen
