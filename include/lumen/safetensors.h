// safetensors: torch-free parsing and validation. The torch view lives in lumen/tensors.h.
// Layout: u64 little-endian header length N, N bytes of JSON, then the raw little-endian data.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lumen/files.h"

namespace lumen {

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, Bool };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);                                  // "F32", ...
DType parse_dtype(const std::string& name, const std::string& where);  // throws Error(Format)

struct TensorEntry {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  size_t begin = 0;  // offsets relative to the start of the data section
  size_t end = 0;
  int64_t numel() const;
};

struct SafetensorsHeader {
  std::map<std::string, std::string> metadata;  // "__metadata__"
  std::vector<TensorEntry> tensors;             // in header order
  size_t data_start = 0;                        // 8 + N
};

// Parses and validates everything: header length vs file size, well-formed JSON, known dtypes,
// non-negative shapes, byte count == dtype size x numel, offsets inside the data, no overlapping
// ranges, no duplicate names. `origin` names the file in error messages. Throws Error(Format).
SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size, const std::string& origin);

// A memory-mapped, validated safetensors file.
class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  const std::string& path() const { return file_->path(); }
  const SafetensorsHeader& header() const { return header_; }
  const TensorEntry* find(const std::string& name) const;  // nullptr when absent
  const uint8_t* data(const TensorEntry& entry) const;     // pointer into the mapping
  const std::shared_ptr<MappedFile>& mapping() const { return file_; }

 private:
  std::shared_ptr<MappedFile> file_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;
};

}  // namespace lumen
