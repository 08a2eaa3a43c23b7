// safetensors header parsing and validation, torch-free so it can be fuzzed on its own.
// Every check here guards a later raw pointer read: an entry that passes is safe to view.
#include "lumen/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "lumen/error.h"

namespace lumen {

namespace {

using json = nlohmann::json;

// The reference library refuses headers above 100 MB; a real header is kilobytes to a few MB.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;

// Names and parser messages come from untrusted bytes: keep messages on one line, bounded, and
// (with ascii_only) free of stray non-UTF-8 bytes.
std::string printable(const std::string& s, size_t limit, bool ascii_only) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < s.size() && i < limit; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f || (ascii_only && c >= 0x80)) {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > limit) out += "...";
  return out;
}

std::string show_name(const std::string& s) { return "'" + printable(s, 120, false) + "'"; }

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size() && i < 16; ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + (shape.size() > 16 ? ",...]" : "]");
}

std::string short_dump(const nlohmann::json& v) {
  std::string s = v.dump();
  return s.size() > 60 ? s.substr(0, 60) + "..." : s;
}

[[noreturn]] void fail(const std::string& origin, const std::string& what) {
  throw Error(ErrorKind::Format, origin + ": " + what);
}

[[noreturn]] void fail_tensor(const std::string& origin, const std::string& name, const std::string& what) {
  throw Error(ErrorKind::Format, origin + ": tensor " + show_name(name) + " " + what);
}

// Header keys in file order plus duplicate detection: nlohmann's DOM keeps only the last of a
// repeated key, so the parse callback sees the keys before they collapse.
struct KeyTracker {
  std::vector<std::string> top_keys;
  std::set<std::string> top_seen;
  std::set<std::string> inner_seen;  // keys of the object under the current top-level key
  std::string duplicate;             // first duplicate found, with its context
  bool has_duplicate = false;

  void on_key(int depth, const std::string& key) {
    if (has_duplicate) return;
    if (depth == 1) {
      inner_seen.clear();
      if (!top_seen.insert(key).second) {
        has_duplicate = true;
        duplicate = "duplicate tensor name " + show_name(key);
        return;
      }
      top_keys.push_back(key);
    } else if (depth == 2) {
      if (!inner_seen.insert(key).second) {
        has_duplicate = true;
        duplicate = "duplicate key " + show_name(key) + " inside " +
                    (top_keys.empty() ? std::string("the header") : show_name(top_keys.back()));
      }
    }
  }
};

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// A non-negative JSON integer that fits in uint64; rejects floats like 2.0 and negatives.
bool as_unsigned(const json& v, uint64_t& out) {
  if (!v.is_number_unsigned()) {
    if (v.is_number_integer() && v.get<int64_t>() >= 0) {  // defensive: parser emits unsigned
      out = static_cast<uint64_t>(v.get<int64_t>());
      return true;
    }
    return false;
  }
  out = v.get<uint64_t>();
  return true;
}

TensorEntry parse_entry(const std::string& origin, const std::string& name, const json& v,
                        size_t data_size) {
  if (!v.is_object()) fail_tensor(origin, name, "entry is not a JSON object (expected {dtype, shape, data_offsets})");
  TensorEntry e;
  e.name = name;

  auto dt = v.find("dtype");
  if (dt == v.end() || !dt->is_string()) fail_tensor(origin, name, "has no string 'dtype'");
  e.dtype = parse_dtype(dt->get<std::string>(), origin + ": tensor " + show_name(name));

  auto sh = v.find("shape");
  if (sh == v.end() || !sh->is_array()) fail_tensor(origin, name, "has no array 'shape'");
  // The product must fit in int64 even with a zero dim: torch multiplies sizes left to right.
  const uint64_t kMaxNumel = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  uint64_t numel = 1;
  bool zero = false, overflow = false;
  for (const auto& d : *sh) {
    uint64_t dim = 0;
    if (!as_unsigned(d, dim) || dim > kMaxNumel)
      fail_tensor(origin, name, "has shape entry " + short_dump(d) + " (expected an integer >= 0)");
    e.shape.push_back(static_cast<int64_t>(dim));
    if (dim == 0) zero = true;
    else if (numel > kMaxNumel / dim) overflow = true;
    else numel *= dim;
  }
  if (overflow) fail_tensor(origin, name, "shape " + shape_str(e.shape) + " has too many elements");
  if (zero) numel = 0;

  auto off = v.find("data_offsets");
  if (off == v.end() || !off->is_array() || off->size() != 2)
    fail_tensor(origin, name, "has no 'data_offsets' pair [begin, end]");
  uint64_t begin = 0, end = 0;
  if (!as_unsigned((*off)[0], begin) || !as_unsigned((*off)[1], end))
    fail_tensor(origin, name, "has data_offsets " + short_dump(*off) + " (expected two integers >= 0)");
  if (begin > end)
    fail_tensor(origin, name, "has data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                                  "] with begin > end");
  if (end > data_size)
    fail_tensor(origin, name, "has data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                                  "] past the end of the data section (" + std::to_string(data_size) +
                                  " bytes; file truncated?)");
  e.begin = static_cast<size_t>(begin);
  e.end = static_cast<size_t>(end);

  const uint64_t elem = dtype_size(e.dtype);
  const uint64_t have = end - begin;
  if (numel > std::numeric_limits<uint64_t>::max() / elem || numel * elem != have)
    fail_tensor(origin, name, "has " + std::to_string(have) + " bytes but " + dtype_name(e.dtype) + " x " +
                                  shape_str(e.shape) + " needs " +
                                  (numel > std::numeric_limits<uint64_t>::max() / elem
                                       ? std::string("more than 2^64")
                                       : std::to_string(numel * elem)));
  return e;
}

std::map<std::string, std::string> parse_metadata(const std::string& origin, const json& v) {
  if (!v.is_object()) fail(origin, "'__metadata__' is not an object of strings");
  std::map<std::string, std::string> out;
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!it->is_string())
      fail(origin, "'__metadata__' entry " + show_name(it.key()) + " is " + it->type_name() + " (expected a string)");
    out[it.key()] = it->get<std::string>();
  }
  return out;
}

}  // namespace

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F64: case DType::I64: return 8;
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: case DType::I16: return 2;
    case DType::I8: case DType::U8: case DType::Bool: return 1;
  }
  return 1;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F64: return "F64";
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::I16: return "I16";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
    case DType::Bool: return "BOOL";
  }
  return "?";
}

DType parse_dtype(const std::string& name, const std::string& where) {
  static const std::pair<const char*, DType> kTable[] = {
      {"F64", DType::F64}, {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16},
      {"I64", DType::I64}, {"I32", DType::I32}, {"I16", DType::I16}, {"I8", DType::I8},
      {"U8", DType::U8},   {"BOOL", DType::Bool}};
  for (const auto& [n, d] : kTable)
    if (name == n) return d;
  throw Error(ErrorKind::Format, where + ": unknown dtype " + show_name(name) +
                                     " (expected one of F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
}

int64_t TensorEntry::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // the product of non-zero dims was checked at parse time
  return n;
}

SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size, const std::string& origin) {
  if (size < 8)
    fail(origin, "file is " + std::to_string(size) + " bytes, too short for the 8-byte header length (truncated?)");
  const uint64_t n = read_u64_le(data);
  if (n > kMaxHeaderBytes)
    fail(origin, "header length " + std::to_string(n) + " is absurd (limit " + std::to_string(kMaxHeaderBytes) +
                     " bytes; not a safetensors file?)");
  if (n > size - 8)
    fail(origin, "header length " + std::to_string(n) + " exceeds the " + std::to_string(size - 8) +
                     " bytes after it (truncated file?)");
  if (n < 2) fail(origin, "header length " + std::to_string(n) + " is too small for a JSON object");

  SafetensorsHeader h;
  h.data_start = static_cast<size_t>(8 + n);
  const size_t data_size = size - h.data_start;
  const char* text = reinterpret_cast<const char*>(data + 8);

  KeyTracker keys;
  json root;
  try {
    json::parser_callback_t cb = [&keys](int depth, json::parse_event_t ev, json& parsed) {
      if (ev == json::parse_event_t::key && parsed.is_string()) keys.on_key(depth, parsed.get_ref<const std::string&>());
      return true;
    };
    root = json::parse(text, text + n, cb);
  } catch (const json::exception& e) {
    // nlohmann's what() is one line; it names the byte position inside the header.
    fail(origin, "header is not valid JSON (" + printable(e.what(), 200, true) + ")");
  }
  if (!root.is_object()) fail(origin, std::string("header is a JSON ") + root.type_name() + ", expected an object");
  if (keys.has_duplicate) fail(origin, "header has " + keys.duplicate);

  for (const std::string& key : keys.top_keys) {
    const json& v = root.at(key);
    if (key == "__metadata__") {
      h.metadata = parse_metadata(origin, v);
      continue;
    }
    h.tensors.push_back(parse_entry(origin, key, v, data_size));
  }

  // Ranges must be disjoint: sort by begin and compare neighbours. Empty tensors own no bytes.
  std::vector<const TensorEntry*> order;
  for (const auto& e : h.tensors)
    if (e.end > e.begin) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const TensorEntry* a, const TensorEntry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->name < b->name;
  });
  for (size_t i = 1; i < order.size(); ++i) {
    const TensorEntry& a = *order[i - 1];
    const TensorEntry& b = *order[i];
    if (b.begin < a.end)
      fail(origin, "tensor " + show_name(b.name) + " bytes [" + std::to_string(b.begin) + ", " + std::to_string(b.end) +
                       ") overlap tensor " + show_name(a.name) + " bytes [" + std::to_string(a.begin) + ", " +
                       std::to_string(a.end) + ")");
  }
  return h;
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  auto f = std::shared_ptr<SafetensorsFile>(new SafetensorsFile());
  f->file_ = MappedFile::open(path);
  f->header_ = parse_safetensors_header(f->file_->data(), f->file_->size(), path);
  for (size_t i = 0; i < f->header_.tensors.size(); ++i) f->index_[f->header_.tensors[i].name] = i;
  return f;
}

const TensorEntry* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

const uint8_t* SafetensorsFile::data(const TensorEntry& entry) const {
  return file_->data() + header_.data_start + entry.begin;
}

}  // namespace lumen
