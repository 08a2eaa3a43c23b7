// Sparse autoencoders: the model (ReLU, JumpReLU, TopK, BatchTopK), SAELens and Gemma Scope
// formats, splicing into a model through its hook set, training from a text corpus, evaluation.
// Shapes: N rows (any leading dims), D d_in, S d_sae.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include "lumen/hooks.h"
#include "lumen/model.h"

namespace lumen {

enum class SaeArch { ReLU, JumpReLU, TopK, BatchTopK };
const char* to_string(SaeArch a);  // "relu", "jumprelu", "topk", "batchtopk"
SaeArch parse_sae_arch(const std::string& s, const std::string& where);  // throws Error(Arg)

struct SaeConfig {
  SaeArch arch = SaeArch::ReLU;
  int64_t d_in = 0;
  int64_t d_sae = 0;
  int64_t k = 0;                     // TopK / BatchTopK: active latents per row (mean, for BatchTopK)
  std::string hook_name;             // e.g. "blocks.2.hook_resid_post"
  bool apply_b_dec_to_input = true;  // encode(x - b_dec)
  // Scalar activation normalisation: the SAE sees x * act_scale and its output is divided by it
  // (SAELens "expected_average_only_in"; saving to SAELens folds it into the weights).
  double act_scale = 1.0;
  c10::ScalarType dtype = c10::kFloat;
  // Free-form provenance written to cfg.json metadata (model_name, dataset_path, context_size...).
  std::map<std::string, std::string> metadata;
};

// The weights are plain tensors (shared on copy), so an attached copy sees later in-place updates.
class Sae {
 public:
  Sae() = default;
  // Fresh weights: W_dec rows of unit norm, W_enc = W_dec^T, zero biases (SAELens/OpenAI init).
  static Sae init(const SaeConfig& cfg, uint64_t seed, c10::Device device = c10::Device(c10::kCPU));
  // From tensors; validates every shape against cfg and throws Error(Sae) naming `origin`.
  static Sae from_tensors(const SaeConfig& cfg, const std::map<std::string, at::Tensor>& t,
                          const std::string& origin, c10::Device device = c10::Device(c10::kCPU));

  const SaeConfig& config() const { return cfg_; }
  SaeConfig& mutable_config() { return cfg_; }
  c10::Device device() const { return W_enc.device(); }

  // x [...,D] in any dtype -> features [...,S] in the SAE dtype. `training` selects BatchTopK's
  // batch-wide top-(k*N) (otherwise it runs with its threshold, as a JumpReLU).
  at::Tensor encode(const at::Tensor& x, bool training = false) const;
  at::Tensor pre_activation(const at::Tensor& x) const;  // [...,S] before the sparsifying step
  at::Tensor activate(const at::Tensor& pre, bool training = false) const;  // pre -> features
  at::Tensor decode(const at::Tensor& f) const;           // [...,S] -> [...,D] in the SAE dtype
  at::Tensor forward(const at::Tensor& x) const { return decode(encode(x)); }

  // W_dec rows scaled to unit norm, the norms moved into W_enc, b_enc and threshold: features
  // change scale, reconstructions do not. Throws for TopK with non-unit rows (it would change the
  // selection).
  void fold_decoder_norm();
  // Moves act_scale into the weights (act_scale becomes 1); reconstructions are unchanged.
  void fold_activation_scale();
  Sae to(c10::Device device, c10::ScalarType dtype) const;  // a copy
  Sae clone() const;

  // Named tensors in SAELens orientation (threshold only for JumpReLU/BatchTopK).
  std::vector<std::pair<std::string, at::Tensor>> tensors() const;
  std::vector<at::Tensor> parameters() const { return {W_enc, b_enc, W_dec, b_dec}; }

  at::Tensor W_enc;      // [D,S]
  at::Tensor b_enc;      // [S]
  at::Tensor W_dec;      // [S,D]
  at::Tensor b_dec;      // [D]
  at::Tensor threshold;  // [S] JumpReLU / BatchTopK (inference)

 private:
  SaeConfig cfg_;
};

// ---- formats (src/sae/formats.cpp) ----------------------------------------------------------------
// Reads a SAELens folder (cfg.json + sae_weights.safetensors), a Gemma Scope params.npz (with its
// hook given, since the file does not hold it), or a folder holding params.npz.
Sae load_sae(const std::string& path, c10::Device device = c10::Device(c10::kCPU),
             const std::string& hook_name = "");
Sae load_saelens(const std::string& dir, c10::Device device = c10::Device(c10::kCPU));
Sae load_gemma_scope_npz(const std::string& npz_path, const std::string& hook_name,
                         c10::Device device = c10::Device(c10::kCPU));
// Writes a folder SAELens loads: activation scale folded, BatchTopK as a JumpReLU with its
// threshold. Files are written atomically.
void save_saelens(const Sae& sae, const std::string& dir);

// A .npz archive (zip of .npy members, stored or deflated) as tensors, by member name without
// ".npy". Supports little-endian f2/f4/f8, i4/i8, u1, b1; C or Fortran order.
std::map<std::string, at::Tensor> read_npz(const std::string& path);
// Writes an .npz (compression: 0 stored, else deflate) - for tests and interchange.
void write_npz(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& arrays,
               bool deflate);

// Throws Error(Sae) unless the SAE fits `model`: its hook is one of the model's hook points and
// d_in equals the site's width.
void check_sae_fits(const Sae& sae, const Model& model);
// The width of a hook site's last axis as an SAE sees it (per-head sites: heads x d_head).
int64_t sae_site_width(const Model& model, const std::string& hook_name);

// ---- attaching (src/sae/attach.cpp) ---------------------------------------------------------------
enum class SpliceMode {
  Replace,      // the site's activation becomes the reconstruction
  WithError,    // reconstruction + error: exactly the original activation, features on the graph
};

// Puts the SAE at its hook point. Declares `<hook>.sae.hook_acts` [...,S], `.sae.hook_recons`
// [...,D] and `.sae.hook_error` [...,D] on the hook set so they can be cached, patched and watched.
// Gradients flow through features, reconstruction and error; upstream of the site the Jacobian is
// the SAE's (Replace) or the identity (WithError).
void attach(HookSet& hooks, const Sae& sae, SpliceMode mode = SpliceMode::WithError);
std::string sae_hook_acts(const std::string& hook);
std::string sae_hook_recons(const std::string& hook);
std::string sae_hook_error(const std::string& hook);

// ---- activation store (src/sae/activation_store.cpp) ----------------------------------------------
struct ActivationStoreOptions {
  std::string corpus;            // plain text (one document per line) or .jsonl
  std::string text_field = "text";
  std::string hook_name;
  int64_t ctx_len = 128;
  int64_t model_batch = 16;      // windows per forward pass
  int64_t buffer_tokens = 65536; // shuffle buffer size (rows of D)
  int64_t batch_tokens = 4096;   // rows per training batch
  uint64_t seed = 0;
  bool stop_at_layer = true;     // false runs the whole model (benchmarks measure what stopping saves)
  std::function<void(const std::string&)> log;  // e.g. "epoch 2: corpus exhausted, reshuffling"
};

// Tokenizes a corpus into windows, runs the model to the hook, drops BOS positions and serves
// shuffled rows from a buffer that refills when half drained. Its position (epoch, window order,
// next window, RNG state) can be saved and restored so a resumed run sees the same rows.
class ActivationStore {
 public:
  ActivationStore(const Model& model, const ActivationStoreOptions& opt);
  ~ActivationStore();
  ActivationStore(ActivationStore&&) noexcept;

  at::Tensor next_batch();  // [batch_tokens, D] float32 on the model's device
  int64_t d_in() const;
  int64_t corpus_tokens() const;  // tokens per epoch (after windowing, BOS excluded)
  int64_t epoch() const;
  // Serialisable state: window order, cursor, RNG and buffer contents.
  std::map<std::string, at::Tensor> state() const;
  void load_state(const std::map<std::string, at::Tensor>& st, const std::string& origin);

 private:
  struct Impl;
  std::unique_ptr<Impl> p_;
};

// Tokenized windows of a corpus (BOS-prefixed when the tokenizer's family does so): [W, ctx_len].
at::Tensor tokenize_corpus(const Model& model, const std::string& corpus, int64_t ctx_len,
                           const std::string& text_field = "text", int64_t max_tokens = -1);

// ---- training (src/sae/train.cpp) -----------------------------------------------------------------
struct TrainOptions {
  SaeConfig sae;                 // arch, d_sae, k, hook_name (d_in comes from the model)
  ActivationStoreOptions data;
  int64_t total_tokens = 2000000;
  double lr = 4e-4;
  double adam_beta1 = 0.9, adam_beta2 = 0.999;
  double lr_warmup_frac = 0.02;  // linear warm-up share of the steps
  double lr_decay_frac = 0.2;    // linear decay to 0 over the last share of the steps
  double l1_coeff = 1.0;         // ReLU: sparsity penalty sum_i |f_i| * ||W_dec_i|| (normalised units)
  double l1_warmup_frac = 0.05;  // ReLU: the L1 coefficient ramps up over this share
  double aux_k_coeff = 1.0 / 32; // TopK/BatchTopK: AuxK loss weight
  int64_t aux_k = 0;             // latents used by AuxK (0: d_in / 2)
  int64_t dead_after_tokens = 200000;  // a latent that has not fired for this many rows is dead
  bool normalize_activations = true;   // estimate act_scale so that E||x|| = sqrt(D)
  uint64_t seed = 0;
  std::string out_dir;           // final SAE (SAELens folder) and checkpoints/
  int64_t checkpoint_every = 0;  // steps; 0: only at the end
  bool resume = false;
  int64_t log_every = 50;        // steps
  int64_t stop_after_steps = -1; // for tests: stop (after checkpointing) at this step
  std::function<void(const std::string&)> log;  // progress lines; default prints to stderr
};

struct TrainResult {
  Sae sae;
  int64_t steps = 0;
  int64_t tokens = 0;
  double final_loss = 0, final_fvu = 0, final_l0 = 0, dead_fraction = 0;
  bool finished = true;  // false when stopped by stop_after_steps
};

TrainResult train_sae(const Model& model, const TrainOptions& opt);

// ---- evaluation (src/sae/eval.cpp) ----------------------------------------------------------------
struct EvalOptions {
  std::string corpus;
  std::string text_field = "text";
  int64_t tokens = 100000;  // evaluation tokens at most
  int64_t ctx_len = 128;
  int64_t batch = 16;       // windows per forward
  double dense_threshold = 0.1;
};

struct EvalResult {
  double l0 = 0, mse = 0, fvu = 0;
  double ce_loss_clean = 0, ce_loss_spliced = 0, ce_loss_ablated = 0, ce_loss_recovered = 0;
  double dead_fraction = 0, dense_fraction = 0;
  int64_t tokens = 0;
};

EvalResult evaluate_sae(const Model& model, const Sae& sae, const EvalOptions& opt);

}  // namespace lumen
