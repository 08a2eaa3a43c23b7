// Model::load: finds the checkpoint format, maps the weights (zero-copy where the dtype allows),
// finds the tokenizer, and finalizes dtype, device and rotary tables.
#include <cmath>
#include <cstring>
#include <dirent.h>

#include <torch/cuda.h>
#include <torch/version.h>

#include "lumen/error.h"
#include "lumen/files.h"
#include "lumen/tensors.h"
#include "model/impl.h"

namespace lumen {
namespace {

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> out;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) out.emplace_back(e->d_name);
    closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

bool is_tokenizer_bin(const std::string& name) {
  return name == "tokenizer.bin" || (name.rfind("tok", 0) == 0 && ends_with(name, ".bin"));
}

// ---- llama2.c legacy .bin -----------------------------------------------------------------------
// Header: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len); a negative
// vocab_size means the classifier is stored separately at the end. Then float32 weights grouped by
// type across layers, and two unused freq_cis blocks of seq_len * head_size / 2 floats.
void load_llama2c(Model::Impl& m, const std::string& path) {
  auto file = MappedFile::open(path);
  require(file->size() >= 28, ErrorKind::Format,
          path + ": " + std::to_string(file->size()) + " bytes is too short for a llama2.c header (28 bytes)");
  int32_t h[7];
  std::memcpy(h, file->data(), sizeof(h));
  const int32_t dim = h[0], hidden = h[1], L = h[2], nh = h[3], nkv = h[4], vocab = h[5], seq = h[6];
  auto bad = [&](const std::string& why) {
    return Error(ErrorKind::Format, path + ": not a llama2.c checkpoint: " + why + " (header dim " + std::to_string(dim) +
                                        ", hidden " + std::to_string(hidden) + ", layers " + std::to_string(L) +
                                        ", heads " + std::to_string(nh) + "/" + std::to_string(nkv) + ", vocab " +
                                        std::to_string(vocab) + ", seq_len " + std::to_string(seq) + ")");
  };
  if (dim <= 0 || hidden <= 0 || L <= 0 || nh <= 0 || nkv <= 0 || vocab == 0 || seq <= 0) throw bad("non-positive size");
  if (dim > 65536 || hidden > 1 << 20 || L > 1024 || std::abs(vocab) > 1 << 22 || seq > 1 << 20 || nh > dim)
    throw bad("implausible size");
  if (dim % nh != 0 || nh % nkv != 0) throw bad("dim must divide by heads and heads by kv heads");
  m.cfg = llama2c_config(dim, hidden, L, nh, nkv, vocab, seq);
  const ModelConfig& c = m.cfg;
  const int64_t D = dim, F = hidden, V = c.d_vocab, E = c.d_head, KV = c.kv_width();
  const int64_t n_floats = V * D + L * D + L * D * D + 2 * L * KV * D + L * D * D + L * D + 3 * L * F * D + D +
                           seq * E / 2 * 2 + (vocab < 0 ? V * D : 0);
  const int64_t want = 28 + 4 * n_floats;
  if (static_cast<int64_t>(file->size()) != want)
    throw bad("file has " + std::to_string(file->size()) + " bytes, the header implies " + std::to_string(want));

  auto base = reinterpret_cast<float*>(const_cast<uint8_t*>(file->data() + 28));
  int64_t off = 0;
  auto take = [&](std::vector<int64_t> shape) {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    auto keep = file;
    auto t = torch::from_blob(base + off, shape, [keep](void*) {}, torch::kFloat);
    off += n;
    return t;
  };
  m.w_embed = take({V, D});
  auto rms_att = take({L, D}), wq = take({L, D, D}), wk = take({L, KV, D}), wv = take({L, KV, D}),
       wo = take({L, D, D}), rms_ffn = take({L, D}), w1 = take({L, F, D}), w2 = take({L, D, F}),
       w3 = take({L, F, D});
  m.lnf_w = take({D});
  off += seq * E / 2 * 2;  // freq_cis_real, freq_cis_imag: recomputed instead
  m.w_unembed = vocab < 0 ? take({V, D}) : m.w_embed;
  m.layers.assign(L, LayerWeights{});
  for (int64_t l = 0; l < L; ++l) {
    LayerWeights& w = m.layers[l];
    w.ln1_w = rms_att[l];
    w.wq = wq[l];
    w.wk = wk[l];
    w.wv = wv[l];
    w.wo = wo[l];
    w.ln2_w = rms_ffn[l];
    w.w_in = w1[l];  // gate (silu)
    w.w_up = w3[l];
    w.w_out = w2[l];
  }
  m.keep_alive.push_back(file);
}

void load_hf(Model::Impl& m, const std::string& dir) {
  m.cfg = parse_hf_config(join_path(dir, "config.json"));
  TensorStore store = TensorStore::open(dir);
  assign_hf_weights(m, store);
}

// Looks next to the model for a tokenizer; records where it looked for the error message.
void find_tokenizer(Model::Impl& m, const std::string& model_dir, bool llama2c, const std::string& explicit_path) {
  const int32_t V = static_cast<int32_t>(m.cfg.d_vocab);
  if (!explicit_path.empty()) {
    m.tokenizer = load_tokenizer(explicit_path, V);
    m.tokenizer_searched = explicit_path;
    return;
  }
  m.tokenizer_searched = model_dir;
  if (llama2c) {
    for (const auto& name : {std::string("tok") + std::to_string(V) + ".bin", std::string("tokenizer.bin")}) {
      const std::string p = join_path(model_dir, name);
      if (file_exists(p)) {
        m.tokenizer = load_llama2c_tokenizer(p, V);
        return;
      }
    }
    for (const auto& name : list_dir(model_dir))
      if (is_tokenizer_bin(name)) {
        m.tokenizer = load_llama2c_tokenizer(join_path(model_dir, name), V);
        return;
      }
    return;
  }
  for (const char* name : {"tokenizer.json", "vocab.json", "encoder.json", "tokenizer.model", "tokenizer.bin"})
    if (file_exists(join_path(model_dir, name))) {
      m.tokenizer = load_tokenizer(model_dir, V);
      return;
    }
}

}  // namespace

Model::Model(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

Model Model::load(const std::string& path, const LoadOptions& opt) {
  auto m = std::make_shared<Impl>();
  m->path = path;
  std::string dir;
  bool llama2c = false;
  if (is_directory(path)) {
    dir = path;
    if (file_exists(join_path(path, "config.json"))) {
      load_hf(*m, path);
    } else {
      std::string bin;
      for (const auto& name : list_dir(path))
        if (ends_with(name, ".bin") && !is_tokenizer_bin(name)) bin = join_path(path, name);
      require(!bin.empty(), ErrorKind::Io,
              path + ": no model here (expected config.json with safetensors weights, or a llama2.c .bin)");
      load_llama2c(*m, bin);
      llama2c = true;
    }
  } else if (file_exists(path)) {
    dir = parent_dir(path);
    if (ends_with(path, ".bin")) {
      load_llama2c(*m, path);
      llama2c = true;
    } else if (ends_with(path, ".safetensors") || ends_with(path, "config.json") || ends_with(path, ".index.json")) {
      load_hf(*m, dir);
    } else {
      throw Error(ErrorKind::Io, path + ": unknown model file (expected a folder with config.json, or a llama2.c .bin)");
    }
  } else {
    throw Error(ErrorKind::Io, path + ": no such file or folder");
  }
  find_tokenizer(*m, dir, llama2c, opt.tokenizer_path);
  require(m->tokenizer || !opt.require_tokenizer, ErrorKind::Tokenizer,
          "no tokenizer found in " + dir + " (looked for tokenizer.json, vocab.json+merges.txt, tokenizer.model, tokenizer.bin, tok*.bin); pass --tokenizer PATH");
  m->finalize(opt.device, opt.dtype);
  return Model(m);
}

std::vector<std::pair<std::string, torch::Tensor*>> Model::Impl::tensor_slots() {
  std::vector<std::pair<std::string, torch::Tensor*>> s = {
      {"embed.W_E", &w_embed}, {"pos_embed.W_pos", &w_pos}, {"ln_final.w", &lnf_w}, {"ln_final.b", &lnf_b}};
  if (!cfg.tied_embeddings) s.push_back({"unembed.W_U", &w_unembed});
  const bool gated = cfg.mlp == MlpKind::Gated;
  for (size_t l = 0; l < layers.size(); ++l) {
    LayerWeights& w = layers[l];
    const std::string b = "blocks." + std::to_string(l) + ".";
    for (auto& kv : std::vector<std::pair<std::string, torch::Tensor*>>{
             {"ln1.w", &w.ln1_w}, {"ln1.b", &w.ln1_b}, {"attn.W_Q", &w.wq}, {"attn.W_K", &w.wk},
             {"attn.W_V", &w.wv}, {"attn.b_Q", &w.bq}, {"attn.b_K", &w.bk}, {"attn.b_V", &w.bv},
             {"attn.W_O", &w.wo}, {"attn.b_O", &w.bo}, {"ln1_post.w", &w.post_attn_w}, {"ln2.w", &w.ln2_w},
             {"ln2.b", &w.ln2_b}, {gated ? "mlp.W_gate" : "mlp.W_in", &w.w_in}, {"mlp.b_in", &w.b_in},
             {"mlp.W_in", &w.w_up}, {"mlp.W_out", &w.w_out}, {"mlp.b_out", &w.b_out}, {"ln2_post.w", &w.post_mlp_w}}) {
      if (kv.second == &w.w_up && !gated) continue;
      s.push_back({b + kv.first, kv.second});
    }
  }
  return s;
}

void Model::Impl::finalize(c10::Device dev, c10::ScalarType dt) {
  // "cuda" names the current GPU; the model reports the indexed device its tensors live on, so
  // that device() == tensor.device() holds.
  if (!dev.is_cpu() && !dev.has_index()) dev = torch::empty({0}, torch::TensorOptions().device(dev)).device();
  if (cfg.norm_weight_plus_one) {
    auto fold = [](torch::Tensor& t) { if (t.defined()) t = t.to(torch::kFloat) + 1.0; };
    fold(lnf_w);
    for (auto& w : layers) {
      fold(w.ln1_w);
      fold(w.ln2_w);
      fold(w.post_attn_w);
      fold(w.post_mlp_w);
    }
  }
  const bool tied = w_unembed.defined() && w_unembed.is_same(w_embed);
  for (auto& slot : tensor_slots())
    if (slot.second->defined()) *slot.second = slot.second->to(dev, dt);
  if (tied) w_unembed = w_embed;
  device = dev;
  dtype = dt;
  if (cfg.pos == PosKind::Rotary) {
    // Angles in float64, then rounded once: closest to the float64 references.
    const int64_t half = cfg.d_head / 2;
    auto inv = torch::pow(cfg.rope_theta, -torch::arange(0, half, torch::kDouble) * 2.0 / cfg.d_head);
    auto ang = torch::arange(0, cfg.n_ctx, torch::kDouble).unsqueeze(1) * inv.unsqueeze(0);
    rope_cos = ang.cos().to(dev, dt);
    rope_sin = ang.sin().to(dev, dt);
  }
}

const ModelConfig& Model::config() const { return impl_->cfg; }
const std::string& Model::path() const { return impl_->path; }
const Tokenizer* Model::tokenizer() const { return impl_->tokenizer.get(); }
const Tokenizer& Model::require_tokenizer() const {
  require(impl_->tokenizer != nullptr, ErrorKind::Tokenizer,
          "no tokenizer found next to the model in " + impl_->tokenizer_searched +
              " (looked for tokenizer.json, vocab.json+merges.txt, tokenizer.model, tokenizer.bin, tok*.bin); pass --tokenizer PATH");
  return *impl_->tokenizer;
}
c10::Device Model::device() const { return impl_->device; }

c10::Device parse_device(const std::string& name) {
  if (name == "cpu") return c10::Device(c10::kCPU);
  require(name == "cuda" || name.rfind("cuda:", 0) == 0, ErrorKind::Arg,
          "device '" + name + "': expected cpu, cuda or cuda:N");
  c10::Device dev(c10::kCPU);
  try {
    dev = c10::Device(name);
  } catch (const std::exception&) {
    throw Error(ErrorKind::Arg, "device '" + name + "': expected cpu, cuda or cuda:N");
  }
  require(torch::cuda::is_available(), ErrorKind::Arg,
          "device '" + name + "': CUDA is not available (libtorch " TORCH_VERSION " sees no GPU, or is a CPU-only build)");
  const int64_t n = static_cast<int64_t>(torch::cuda::device_count());
  require(!dev.has_index() || dev.index() < n, ErrorKind::Arg,
          "device '" + name + "': this machine has " + std::to_string(n) + " CUDA device(s)");
  return dev;
}

c10::ScalarType parse_dtype(const std::string& name) {
  if (name == "f32" || name == "float32") return c10::kFloat;
  if (name == "bf16" || name == "bfloat16") return c10::kBFloat16;
  if (name == "f16" || name == "float16") return c10::kHalf;
  throw Error(ErrorKind::Arg, "dtype '" + name + "': expected f32, bf16 or f16");
}
c10::ScalarType Model::dtype() const { return impl_->dtype; }

std::vector<HookPoint> Model::hook_points() const {
  const auto& c = impl_->cfg;
  return all_hook_points(c.n_layers, c.pos == PosKind::Learned, c.mlp == MlpKind::Gated);
}

std::vector<std::string> Model::hook_names() const {
  std::vector<std::string> out;
  for (const auto& p : hook_points()) out.push_back(p.name());
  return out;
}

std::map<std::string, at::Tensor> Model::named_parameters() const {
  std::map<std::string, at::Tensor> out;
  for (auto& slot : impl_->tensor_slots())
    if (slot.second->defined()) out[slot.first] = *slot.second;
  return out;
}

void Model::set_requires_grad(bool on) {
  const bool tied = impl_->w_unembed.is_same(impl_->w_embed);
  for (auto& slot : impl_->tensor_slots())
    if (slot.second->defined()) *slot.second = slot.second->detach().requires_grad_(on);
  if (tied) impl_->w_unembed = impl_->w_embed;
}

int64_t Model::num_parameters() const {
  int64_t n = 0;
  for (auto& kv : named_parameters()) n += kv.second.numel();
  return n;
}

}  // namespace lumen
