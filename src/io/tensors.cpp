// Safetensors as torch tensors: zero-copy views of the mapping, sharded checkpoints, atomic writes.
#include "lumen/tensors.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <ostream>
#include <set>

#include <nlohmann/json.hpp>

#include "lumen/error.h"
#include "lumen/files.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; lumen's zero-copy reader assumes a little-endian host"
#endif

namespace lumen {

namespace {

using json = nlohmann::json;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Quotes a tensor or shard name for a one-line message (index files are untrusted input).
std::string show(const std::string& s) {
  std::string out = "'";
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f) {
      static const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += ch;
    }
  }
  return out + "'";
}

// The name the user most likely meant: HF checkpoints differ mostly by a prefix such as
// "transformer." or "model.", so a name that ends with the other (or vice versa) is the hint.
std::string suggest(const std::map<std::string, size_t>& where, const std::string& name) {
  for (const auto& [have, idx] : where) {
    (void)idx;
    if (ends_with(have, "." + name) || ends_with(name, "." + have)) return have;
  }
  return "";
}

// Reads model.safetensors.index.json: {"metadata": {...}, "weight_map": {tensor: shard file}}.
json read_index(const std::string& path) {
  const std::string text = read_file(path);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(ErrorKind::Format, path + ": not valid JSON (" + std::string(e.what()) + ")");
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    throw Error(ErrorKind::Format, path + ": expected an object with a 'weight_map' of tensor name -> shard file");
  return j;
}

std::string metadata_value(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

}  // namespace

// ---- dtype maps -------------------------------------------------------------------------------

DType dtype_from_torch(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return DType::F64;
    case at::kFloat: return DType::F32;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    case at::kLong: return DType::I64;
    case at::kInt: return DType::I32;
    case at::kShort: return DType::I16;
    case at::kChar: return DType::I8;
    case at::kByte: return DType::U8;
    case at::kBool: return DType::Bool;
    default: break;
  }
  throw Error(ErrorKind::Format, std::string("torch dtype ") + c10::toString(t) +
                                     " has no safetensors equivalent (supported: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)");
}

at::ScalarType dtype_to_torch(DType d) {
  switch (d) {
    case DType::F64: return at::kDouble;
    case DType::F32: return at::kFloat;
    case DType::F16: return at::kHalf;
    case DType::BF16: return at::kBFloat16;
    case DType::I64: return at::kLong;
    case DType::I32: return at::kInt;
    case DType::I16: return at::kShort;
    case DType::I8: return at::kChar;
    case DType::U8: return at::kByte;
    case DType::Bool: return at::kBool;
  }
  return at::kFloat;
}

// ---- reading ----------------------------------------------------------------------------------

TensorStore TensorStore::open(const std::string& path) {
  TensorStore store;
  store.origin_ = path;

  std::string file = path;
  if (is_directory(path)) {
    const std::string single = join_path(path, "model.safetensors");
    const std::string index = join_path(path, "model.safetensors.index.json");
    if (file_exists(single)) file = single;
    else if (file_exists(index)) file = index;
    else
      throw Error(ErrorKind::Io, path + ": folder has neither model.safetensors nor model.safetensors.index.json");
  }

  if (!ends_with(file, ".json")) {
    auto f = SafetensorsFile::open(file);
    for (size_t i = 0; i < f->header().tensors.size(); ++i) store.where_[f->header().tensors[i].name] = 0;
    store.metadata_ = f->header().metadata;
    store.files_.push_back(std::move(f));
    return store;
  }

  // Sharded: each shard is opened once, in order of first mention, and must hold what the index
  // says it holds, so a stale index fails here rather than at the first forward pass.
  const json index = read_index(file);
  const std::string dir = parent_dir(file);
  std::map<std::string, size_t> shard_slot;
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
    const std::string& tensor = it.key();
    if (!it->is_string())
      throw Error(ErrorKind::Format, file + ": weight_map entry " + show(tensor) + " is not a shard file name");
    const std::string shard = it->get<std::string>();
    auto slot = shard_slot.find(shard);
    if (slot == shard_slot.end()) {
      const std::string shard_path = join_path(dir, shard);
      if (!file_exists(shard_path))
        throw Error(ErrorKind::Io, file + ": shard " + show(shard) + " (holding tensor " + show(tensor) +
                                       ") is missing; expected it at " + shard_path);
      store.files_.push_back(SafetensorsFile::open(shard_path));
      slot = shard_slot.emplace(shard, store.files_.size() - 1).first;
    }
    if (!store.files_[slot->second]->find(tensor))
      throw Error(ErrorKind::Format, file + ": weight_map puts tensor " + show(tensor) + " in " + show(shard) +
                                         ", but that shard has no such tensor (stale index?)");
    store.where_[tensor] = slot->second;
  }
  // Shard headers carry the format tag; the index's own metadata (total_size, ...) wins on clashes.
  for (const auto& f : store.files_)
    for (const auto& [k, v] : f->header().metadata) store.metadata_.emplace(k, v);
  if (index.contains("metadata") && index["metadata"].is_object())
    for (auto it = index["metadata"].begin(); it != index["metadata"].end(); ++it)
      store.metadata_[it.key()] = metadata_value(*it);
  return store;
}

bool TensorStore::has(const std::string& name) const { return where_.count(name) != 0; }

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [name, idx] : where_) {
    (void)idx;
    out.push_back(name);
  }
  return out;
}

const TensorEntry& TensorStore::entry(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) {
    const std::string hint = suggest(where_, name);
    throw Error(ErrorKind::Format, origin_ + ": no tensor " + show(name) + " among " + std::to_string(where_.size()) +
                                       " tensors" + (hint.empty() ? "" : "; did you mean " + show(hint) + "?"));
  }
  return *files_[it->second]->find(name);
}

std::string TensorStore::file_of(const std::string& name) const {
  entry(name);  // throws with the usual message when absent
  return files_[where_.at(name)]->path();
}

at::Tensor TensorStore::get(const std::string& name) const {
  const TensorEntry& e = entry(name);
  const std::shared_ptr<SafetensorsFile>& file = files_[where_.at(name)];
  const at::ScalarType st = dtype_to_torch(e.dtype);
  const auto opts = at::TensorOptions().dtype(st).device(at::kCPU);
  if (e.numel() == 0) return torch::empty(e.shape, opts);

  const uint8_t* src = file->data(e);
  const size_t nbytes = e.end - e.begin;
  if (e.dtype == DType::Bool) {
    // torch assumes bool bytes are 0 or 1; anything else is undefined behaviour in its kernels.
    for (size_t i = 0; i < nbytes; ++i)
      if (src[i] > 1)
        throw Error(ErrorKind::Format, file->path() + ": tensor " + show(name) + " is BOOL but byte " + std::to_string(i) +
                                           " is " + std::to_string(src[i]) + " (expected 0 or 1)");
  }

  // The mapping is private copy-on-write, so handing torch a writable pointer is safe for the
  // file; the deleter's copy of the shared_ptr keeps the mapping alive as long as the tensor.
  if (reinterpret_cast<uintptr_t>(src) % dtype_size(e.dtype) == 0) {
    std::shared_ptr<SafetensorsFile> keep = file;
    return torch::from_blob(const_cast<uint8_t*>(src), e.shape, [keep](void*) mutable { keep.reset(); }, opts);
  }
  at::Tensor out = torch::empty(e.shape, opts);
  std::memcpy(out.data_ptr(), src, nbytes);
  return out;
}

// ---- writing ----------------------------------------------------------------------------------

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  struct Item {
    std::string name;
    DType dtype;
    at::Tensor data;  // CPU, contiguous
    size_t begin = 0, end = 0;
  };
  std::vector<Item> items;
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    if (!seen.insert(name).second)
      throw Error(ErrorKind::Format, path + ": tensor name " + show(name) + " given twice; names must be unique");
    if (name == "__metadata__")
      throw Error(ErrorKind::Format, path + ": '__metadata__' is reserved and cannot name a tensor");
    if (!t.defined()) throw Error(ErrorKind::Format, path + ": tensor " + show(name) + " is undefined");
    Item it{name, dtype_from_torch(t.scalar_type()), t.detach().to(at::kCPU).contiguous()};
    items.push_back(std::move(it));
  }

  // Data order as the reference library writes it: element size descending, then name, so
  // every tensor stays aligned to its element size once the header is padded to 8 bytes.
  std::vector<Item*> layout;
  for (auto& it : items) layout.push_back(&it);
  std::sort(layout.begin(), layout.end(), [](const Item* a, const Item* b) {
    const size_t sa = dtype_size(a->dtype), sb = dtype_size(b->dtype);
    return sa != sb ? sa > sb : a->name < b->name;
  });
  size_t offset = 0;
  for (Item* it : layout) {
    it->begin = offset;
    offset += static_cast<size_t>(it->data.numel()) * dtype_size(it->dtype);
    it->end = offset;
  }

  // Header keys sorted (json's std::map), as the reference files have them.
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  for (const auto& it : items) {
    json shape = json::array();
    for (int64_t d : it.data.sizes()) shape.push_back(d);
    header[it.name] = {{"dtype", dtype_name(it.dtype)}, {"shape", shape}, {"data_offsets", {it.begin, it.end}}};
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {
    throw Error(ErrorKind::Format, path + ": a tensor name or metadata string is not valid UTF-8 (" +
                                       std::string(e.what()) + ")");
  }
  text.append((8 - text.size() % 8) % 8, ' ');

  write_file_atomic(path, [&](std::ostream& out) {
    uint8_t len[8];
    uint64_t n = text.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const Item* it : layout)
      out.write(static_cast<const char*>(it->data.data_ptr()), static_cast<std::streamsize>(it->end - it->begin));
  });
}

}  // namespace lumen
