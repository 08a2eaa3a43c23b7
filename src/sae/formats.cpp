// SAE files: SAELens folders (cfg.json + sae_weights.safetensors, read and write), Gemma Scope
// params.npz through a small .npz reader/writer on libzip, and the checks that an SAE fits a model.
#include <torch/torch.h>
#include <zip.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "lumen/error.h"
#include "lumen/files.h"
#include "lumen/sae.h"
#include "lumen/tensors.h"

namespace lumen {
namespace {

using json = nlohmann::json;

c10::ScalarType parse_torch_dtype(const std::string& s, const std::string& origin) {
  std::string d = s.rfind("torch.", 0) == 0 ? s.substr(6) : s;
  if (d == "float32" || d == "float") return torch::kFloat;
  if (d == "float16" || d == "half") return torch::kHalf;
  if (d == "bfloat16") return torch::kBFloat16;
  if (d == "float64" || d == "double") return torch::kDouble;
  throw Error(ErrorKind::Sae, origin + ": dtype '" + s + "' is not a floating type (expected float32, float16, bfloat16)");
}

const char* torch_dtype_name(c10::ScalarType t) {
  switch (t) {
    case torch::kHalf: return "float16";
    case torch::kBFloat16: return "bfloat16";
    case torch::kDouble: return "float64";
    default: return "float32";
  }
}

// Reads a json value as an integer whether stored as 8 or 8.0 (SAELens allows float k).
int64_t as_int(const json& v, const std::string& key, const std::string& origin) {
  require(v.is_number(), ErrorKind::Sae, origin + ": '" + key + "' must be a number");
  const double d = v.get<double>();
  require(d == static_cast<double>(static_cast<int64_t>(d)), ErrorKind::Sae, origin + ": '" + key + "' must be an integer");
  return static_cast<int64_t>(d);
}

// ---- .npy ---------------------------------------------------------------------------------------

struct NpyType {
  c10::ScalarType type;
  size_t size;
};

NpyType npy_type(const std::string& descr, const std::string& where) {
  require(descr.size() >= 3, ErrorKind::Format, where + ": unsupported dtype '" + descr + "'");
  const char order = descr[0];
  require(order == '<' || order == '|' || order == '=', ErrorKind::Format,
          where + ": big-endian dtype '" + descr + "' is not supported (expected little-endian)");
  const std::string k = descr.substr(1);
  if (k == "f4") return {torch::kFloat, 4};
  if (k == "f8") return {torch::kDouble, 8};
  if (k == "f2") return {torch::kHalf, 2};
  if (k == "i4") return {torch::kInt, 4};
  if (k == "i8") return {torch::kLong, 8};
  if (k == "u1") return {torch::kByte, 1};
  if (k == "b1") return {torch::kBool, 1};
  throw Error(ErrorKind::Format, where + ": unsupported dtype '" + descr + "' (expected f2, f4, f8, i4, i8, u1 or b1)");
}

// The value after `'key':` in a numpy header dict, up to the next top-level comma.
std::string header_field(const std::string& h, const std::string& key, const std::string& where) {
  const std::string pat = "'" + key + "'";
  size_t p = h.find(pat);
  require(p != std::string::npos, ErrorKind::Format, where + ": .npy header has no '" + key + "'");
  p = h.find(':', p + pat.size());
  require(p != std::string::npos, ErrorKind::Format, where + ": malformed .npy header");
  ++p;
  while (p < h.size() && h[p] == ' ') ++p;
  int depth = 0;
  size_t e = p;
  for (; e < h.size(); ++e) {
    if (h[e] == '(') ++depth;
    if (h[e] == ')') --depth;
    if (depth == 0 && (h[e] == ',' || h[e] == '}')) break;
  }
  return h.substr(p, e - p);
}

at::Tensor parse_npy(const std::string& buf, const std::string& where) {
  require(buf.size() >= 10 && std::memcmp(buf.data(), "\x93NUMPY", 6) == 0, ErrorKind::Format,
          where + ": not a .npy array (bad magic)");
  const uint8_t major = static_cast<uint8_t>(buf[6]);
  size_t hlen, hstart;
  if (major == 1) {
    hlen = static_cast<uint8_t>(buf[8]) | (static_cast<size_t>(static_cast<uint8_t>(buf[9])) << 8);
    hstart = 10;
  } else {
    require(buf.size() >= 12, ErrorKind::Format, where + ": truncated .npy header");
    hlen = 0;
    for (int i = 0; i < 4; ++i) hlen |= static_cast<size_t>(static_cast<uint8_t>(buf[8 + i])) << (8 * i);
    hstart = 12;
  }
  require(hstart + hlen <= buf.size(), ErrorKind::Format, where + ": .npy header runs past the end of the member");
  const std::string h = buf.substr(hstart, hlen);
  std::string descr = header_field(h, "descr", where);
  require(descr.size() >= 2 && (descr.front() == '\'' || descr.front() == '"'), ErrorKind::Format,
          where + ": structured .npy dtypes are not supported");
  descr = descr.substr(1, descr.size() - 2);
  const NpyType t = npy_type(descr, where);
  const bool fortran = header_field(h, "fortran_order", where).rfind("True", 0) == 0;
  std::string shp = header_field(h, "shape", where);
  std::vector<int64_t> shape;
  for (size_t i = 0; i < shp.size();) {
    if (std::isdigit(static_cast<unsigned char>(shp[i]))) {
      size_t j = i;
      while (j < shp.size() && std::isdigit(static_cast<unsigned char>(shp[j]))) ++j;
      shape.push_back(std::stoll(shp.substr(i, j - i)));
      i = j;
    } else {
      ++i;
    }
  }
  int64_t numel = 1;
  for (auto d : shape) numel *= d;
  const size_t data_start = hstart + hlen;
  require(buf.size() - data_start == static_cast<size_t>(numel) * t.size, ErrorKind::Format,
          where + ": .npy data holds " + std::to_string(buf.size() - data_start) + " bytes, shape needs " +
              std::to_string(static_cast<size_t>(numel) * t.size));
  at::Tensor out;
  if (fortran) {
    // Fortran order: the data is the transpose laid out in C order.
    std::vector<int64_t> rev(shape.rbegin(), shape.rend());
    out = torch::empty(rev, torch::TensorOptions().dtype(t.type));
    std::memcpy(out.data_ptr(), buf.data() + data_start, buf.size() - data_start);
    std::vector<int64_t> perm;
    for (int64_t i = static_cast<int64_t>(shape.size()) - 1; i >= 0; --i) perm.push_back(i);
    out = out.permute(perm).contiguous();
  } else {
    out = torch::empty(shape, torch::TensorOptions().dtype(t.type));
    std::memcpy(out.data_ptr(), buf.data() + data_start, buf.size() - data_start);
  }
  return out;
}

std::string make_npy(const at::Tensor& t_in) {
  at::Tensor t = t_in.detach().to(torch::kCPU).contiguous();
  std::string descr;
  switch (t.scalar_type()) {
    case torch::kFloat: descr = "<f4"; break;
    case torch::kDouble: descr = "<f8"; break;
    case torch::kHalf: descr = "<f2"; break;
    case torch::kInt: descr = "<i4"; break;
    case torch::kLong: descr = "<i8"; break;
    case torch::kByte: descr = "|u1"; break;
    case torch::kBool: descr = "|b1"; break;
    default: t = t.to(torch::kFloat); descr = "<f4";
  }
  std::string shape = "(";
  for (int64_t i = 0; i < t.dim(); ++i) shape += std::to_string(t.size(i)) + (t.dim() == 1 || i + 1 < t.dim() ? "," : "");
  shape += ")";
  std::string h = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  // Pad so the data starts on a 64-byte boundary, header ends with '\n'.
  while ((10 + h.size() + 1) % 64 != 0) h += ' ';
  h += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(h.size() & 0xff);
  out += static_cast<char>((h.size() >> 8) & 0xff);
  out += h;
  out.append(static_cast<const char*>(t.data_ptr()), t.nbytes());
  return out;
}

std::string zip_error_text(int code) {
  zip_error_t e;
  zip_error_init_with_code(&e, code);
  std::string s = zip_error_strerror(&e);
  zip_error_fini(&e);
  return s;
}

}  // namespace

std::map<std::string, at::Tensor> read_npz(const std::string& path) {
  int err = 0;
  zip_t* z = zip_open(path.c_str(), ZIP_RDONLY, &err);
  require(z != nullptr, err == ZIP_ER_NOENT || err == ZIP_ER_OPEN ? ErrorKind::Io : ErrorKind::Format,
          path + ": cannot open as .npz (" + zip_error_text(err) + ")");
  std::unique_ptr<zip_t, int (*)(zip_t*)> guard(z, zip_close);
  std::map<std::string, at::Tensor> out;
  const zip_int64_t n = zip_get_num_entries(z, 0);
  for (zip_int64_t i = 0; i < n; ++i) {
    zip_stat_t st;
    zip_stat_init(&st);
    require(zip_stat_index(z, i, 0, &st) == 0 && (st.valid & ZIP_STAT_SIZE) && (st.valid & ZIP_STAT_NAME), ErrorKind::Format,
            path + ": unreadable zip entry " + std::to_string(i));
    std::string name = st.name;
    if (!name.empty() && name.back() == '/') continue;
    const std::string where = path + ":" + name;
    zip_file_t* f = zip_fopen_index(z, i, 0);
    require(f != nullptr, ErrorKind::Format, where + ": cannot open member (" + std::string(zip_strerror(z)) + ")");
    std::string buf(st.size, '\0');
    const zip_int64_t got = zip_fread(f, buf.data(), st.size);
    zip_fclose(f);
    require(got == static_cast<zip_int64_t>(st.size), ErrorKind::Format,
            where + ": member is truncated or corrupt (read " + std::to_string(got) + " of " + std::to_string(st.size) + " bytes)");
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0) name = name.substr(0, name.size() - 4);
    out[name] = parse_npy(buf, where);
  }
  return out;
}

void write_npz(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& arrays, bool deflate) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int err = 0;
  zip_t* z = zip_open(tmp.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
  require(z != nullptr, ErrorKind::Io, tmp + ": cannot create (" + zip_error_text(err) + ")");
  std::vector<std::string> bufs;  // must outlive zip_close, which reads them
  bufs.reserve(arrays.size());
  for (const auto& kv : arrays) {
    bufs.push_back(make_npy(kv.second));
    zip_source_t* src = zip_source_buffer(z, bufs.back().data(), bufs.back().size(), 0);
    const zip_int64_t idx = src ? zip_file_add(z, (kv.first + ".npy").c_str(), src, ZIP_FL_OVERWRITE) : -1;
    if (idx < 0) {
      if (src) zip_source_free(src);
      std::string msg = zip_strerror(z);
      zip_discard(z);
      throw Error(ErrorKind::Io, path + ": cannot add member '" + kv.first + "' (" + msg + ")");
    }
    zip_set_file_compression(z, idx, deflate ? ZIP_CM_DEFLATE : ZIP_CM_STORE, 0);
  }
  if (zip_close(z) != 0) {
    std::string msg = zip_strerror(z);
    zip_discard(z);
    throw Error(ErrorKind::Io, path + ": cannot write (" + msg + ")");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  require(!ec, ErrorKind::Io, path + ": cannot rename the finished file into place (" + ec.message() + ")");
}

// ---- SAELens ------------------------------------------------------------------------------------

Sae load_saelens(const std::string& dir, c10::Device device) {
  const std::string cfg_path = join_path(dir, "cfg.json");
  const std::string w_path = join_path(dir, "sae_weights.safetensors");
  require(file_exists(cfg_path), ErrorKind::Io, dir + ": no cfg.json (expected a SAELens folder with cfg.json + sae_weights.safetensors)");
  require(file_exists(w_path), ErrorKind::Io, dir + ": no sae_weights.safetensors next to cfg.json");
  json j;
  try {
    j = json::parse(read_file(cfg_path));
  } catch (const json::exception& e) {
    throw Error(ErrorKind::Format, cfg_path + ": not valid JSON (" + e.what() + ")");
  }
  require(j.is_object(), ErrorKind::Format, cfg_path + ": expected a JSON object");
  const json meta = j.contains("metadata") && j["metadata"].is_object() ? j["metadata"] : json::object();
  auto find = [&](const std::string& key) -> const json* {
    if (j.contains(key) && !j[key].is_null()) return &j[key];
    if (meta.contains(key) && !meta[key].is_null()) return &meta[key];
    return nullptr;
  };

  SaeConfig c;
  require(find("d_in") && find("d_sae"), ErrorKind::Sae, cfg_path + ": needs 'd_in' and 'd_sae'");
  c.d_in = as_int(*find("d_in"), "d_in", cfg_path);
  c.d_sae = as_int(*find("d_sae"), "d_sae", cfg_path);
  std::string arch = "standard";
  if (const json* a = find("architecture")) arch = a->get<std::string>();
  else if (const json* a = find("activation_fn_str")) arch = a->get<std::string>() == "topk" ? "topk" : "standard";
  if (const json* a = find("lumen_arch")) arch = a->get<std::string>();  // BatchTopK saved as jumprelu
  if (arch == "gated") throw Error(ErrorKind::Sae, cfg_path + ": gated SAEs are not supported (relu, jumprelu, topk, batchtopk)");
  c.arch = parse_sae_arch(arch, cfg_path);
  if (c.arch == SaeArch::TopK || c.arch == SaeArch::BatchTopK) {
    const json* k = find("k");
    if (!k && j.contains("activation_fn_kwargs") && j["activation_fn_kwargs"].is_object() && j["activation_fn_kwargs"].contains("k"))
      k = &j["activation_fn_kwargs"]["k"];
    if (!k) k = find("lumen_k");
    require(k != nullptr, ErrorKind::Sae, cfg_path + ": a " + arch + " SAE needs 'k'");
    c.k = as_int(*k, "k", cfg_path);
  }
  if (const json* h = find("hook_name")) c.hook_name = h->get<std::string>();
  require(!c.hook_name.empty(), ErrorKind::Sae, cfg_path + ": no 'hook_name' (top level or in 'metadata')");
  if (const json* b = find("apply_b_dec_to_input")) c.apply_b_dec_to_input = b->get<bool>();
  if (const json* d = find("dtype")) c.dtype = parse_torch_dtype(d->get<std::string>(), cfg_path);
  std::string norm = "none";
  if (const json* n = find("normalize_activations")) norm = n->is_string() ? n->get<std::string>() : "none";
  if (norm == "expected_average_only_in") {
    // SAELens folds the scale into the weights on save; lumen also records it when unfolded.
    if (const json* s = find("lumen_act_scale")) c.act_scale = s->get<double>();
  } else {
    require(norm == "none", ErrorKind::Sae,
            cfg_path + ": normalize_activations '" + norm + "' is per-token; lumen supports 'none' and 'expected_average_only_in'");
  }
  for (const char* key : {"model_name", "dataset_path", "context_size", "prepend_bos"})
    if (const json* v = find(key)) c.metadata[key] = v->is_string() ? v->get<std::string>() : v->dump();

  TensorStore store = TensorStore::open(w_path);
  std::map<std::string, at::Tensor> t;
  for (const auto& n : store.names()) t[n] = store.get(n);
  if (!t.count("threshold") && t.count("log_threshold")) t["threshold"] = t["log_threshold"].exp();
  return Sae::from_tensors(c, t, w_path, device);
}

void save_saelens(const Sae& sae_in, const std::string& dir) {
  Sae sae = sae_in.clone();
  sae.fold_activation_scale();
  const SaeConfig& c = sae.config();
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  require(!ec, ErrorKind::Io, dir + ": cannot create folder (" + ec.message() + ")");

  // BatchTopK runs with its threshold at inference, which is exactly a JumpReLU to SAELens.
  const bool jump = c.arch == SaeArch::JumpReLU || c.arch == SaeArch::BatchTopK;
  json j;
  j["architecture"] = jump ? "jumprelu" : c.arch == SaeArch::TopK ? "topk" : "standard";
  j["d_in"] = c.d_in;
  j["d_sae"] = c.d_sae;
  j["dtype"] = torch_dtype_name(c.dtype);
  j["device"] = "cpu";
  j["apply_b_dec_to_input"] = c.apply_b_dec_to_input;
  j["normalize_activations"] = "none";
  j["reshape_activations"] = "none";
  if (c.arch == SaeArch::TopK) {
    j["k"] = c.k;
    j["rescale_acts_by_decoder_norm"] = false;
  }
  if (c.arch == SaeArch::BatchTopK) {
    j["lumen_arch"] = "batchtopk";
    j["lumen_k"] = c.k;
  }
  json meta = json::object();
  meta["hook_name"] = c.hook_name;
  meta["hook_head_index"] = nullptr;
  meta["prepend_bos"] = true;
  for (const auto& kv : c.metadata) {
    // Values are kept as strings in SaeConfig; numbers and booleans go back to JSON literals.
    json v = json::parse(kv.second, nullptr, /*allow_exceptions=*/false);
    meta[kv.first] = (v.is_number() || v.is_boolean() || v.is_null()) && !v.is_discarded() ? v : json(kv.second);
  }
  meta["sae_lens_training_version"] = nullptr;
  for (const char* key : {"model_name", "dataset_path", "context_size"})
    if (!meta.contains(key)) meta[key] = nullptr;
  j["metadata"] = meta;
  // Legacy (SAELens < 6) keys, so older readers find the hook and activation too.
  j["hook_name"] = c.hook_name;
  auto hp = HookPoint::parse(c.hook_name);
  j["hook_layer"] = hp && !hp->is_global() ? hp->layer : 0;
  j["activation_fn_str"] = c.arch == SaeArch::TopK ? "topk" : "relu";
  if (c.arch == SaeArch::TopK) j["activation_fn_kwargs"] = {{"k", c.k}};
  for (const char* key : {"model_name", "dataset_path", "context_size", "prepend_bos", "hook_head_index", "sae_lens_training_version"})
    j[key] = meta[key];
  j["finetuning_scaling_factor"] = false;
  j["dataset_trust_remote_code"] = false;

  std::vector<std::pair<std::string, at::Tensor>> t;
  for (auto& kv : sae.tensors()) t.emplace_back(kv.first, kv.second.to(torch::kCPU).contiguous());
  save_safetensors(join_path(dir, "sae_weights.safetensors"), t);
  const std::string text = j.dump(2) + "\n";
  write_file_atomic(join_path(dir, "cfg.json"), [&](std::ostream& o) { o << text; });
}

// ---- Gemma Scope --------------------------------------------------------------------------------

Sae load_gemma_scope_npz(const std::string& npz_path, const std::string& hook_name, c10::Device device) {
  auto t = read_npz(npz_path);
  for (const char* key : {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"})
    require(t.count(key), ErrorKind::Sae, npz_path + ": Gemma Scope params need '" + std::string(key) + "' (have " +
                                              std::to_string(t.size()) + " arrays)");
  require(t["W_enc"].dim() == 2, ErrorKind::Sae, npz_path + ": W_enc must be 2-D [d_in, d_sae]");
  require(!hook_name.empty(), ErrorKind::Arg, npz_path + ": params.npz does not name its hook; pass the hook (e.g. --hook blocks.12.hook_resid_post)");
  SaeConfig c;
  c.arch = SaeArch::JumpReLU;
  c.d_in = t["W_enc"].size(0);
  c.d_sae = t["W_enc"].size(1);
  c.hook_name = hook_name;
  c.apply_b_dec_to_input = false;  // Gemma Scope encodes x directly
  c.dtype = torch::kFloat;
  return Sae::from_tensors(c, t, npz_path, device);
}

Sae load_sae(const std::string& path, c10::Device device, const std::string& hook_name) {
  auto ends_with = [](const std::string& s, const std::string& e) {
    return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0;
  };
  if (ends_with(path, ".npz")) return load_gemma_scope_npz(path, hook_name, device);
  if (is_directory(path)) {
    if (file_exists(join_path(path, "cfg.json"))) {
      Sae s = load_saelens(path, device);
      if (!hook_name.empty()) s.mutable_config().hook_name = hook_name;
      return s;
    }
    if (file_exists(join_path(path, "params.npz"))) return load_gemma_scope_npz(join_path(path, "params.npz"), hook_name, device);
  }
  require(file_exists(path), ErrorKind::Io, path + ": no such file or folder");
  throw Error(ErrorKind::Sae, path + ": not an SAE (expected a SAELens folder with cfg.json or a Gemma Scope params.npz)");
}

// ---- fitting a model ----------------------------------------------------------------------------

int64_t sae_site_width(const Model& model, const std::string& hook_name) {
  const auto names = model.hook_names();
  require(std::find(names.begin(), names.end(), hook_name) != names.end(), ErrorKind::Sae,
          "SAE hook '" + hook_name + "' is not a hook point of " + model.path() + " (run `lumen info MODEL` to list them)");
  const ModelConfig& mc = model.config();
  switch (HookPoint::parse(hook_name)->site) {
    case HookSite::mlp_pre: case HookSite::mlp_pre_linear: case HookSite::mlp_post: return mc.d_mlp;
    case HookSite::attn_q: case HookSite::attn_z: return mc.n_heads * mc.d_head;
    case HookSite::attn_k: case HookSite::attn_v: return mc.n_kv_heads * mc.d_head;
    case HookSite::attn_scores: case HookSite::attn_pattern:
      throw Error(ErrorKind::Sae, "SAE hook '" + hook_name + "': attention scores/patterns cannot carry an SAE");
    default: return mc.d_model;
  }
}

void check_sae_fits(const Sae& sae, const Model& model) {
  const auto& c = sae.config();
  const int64_t width = sae_site_width(model, c.hook_name);
  require(c.d_in == width, ErrorKind::Sae,
          "SAE d_in " + std::to_string(c.d_in) + " does not match the width " + std::to_string(width) + " of '" + c.hook_name +
              "' in " + model.path());
}

}  // namespace lumen
