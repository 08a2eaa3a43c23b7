// Tensor files as torch tensors: safetensors (single or sharded) read through mmap, atomic writes.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "lumen/safetensors.h"

namespace lumen {

// Every tensor of a checkpoint: one .safetensors file, a folder holding model.safetensors or
// model.safetensors.index.json (sharded), or the index file itself.
class TensorStore {
 public:
  static TensorStore open(const std::string& path);

  bool has(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  // The tensor on CPU in its file dtype. Zero-copy (a view of the copy-on-write mapping, which
  // the tensor keeps alive) when the data is aligned for its dtype; otherwise a copy.
  // Throws Error(Format) naming the file and tensor when absent.
  at::Tensor get(const std::string& name) const;
  const TensorEntry& entry(const std::string& name) const;
  std::string file_of(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& origin() const { return origin_; }

 private:
  std::string origin_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index in files_
  std::map<std::string, std::string> metadata_;
};

// Writes tensors (any device; contiguous CPU copies are made) with their dtypes preserved, via a
// temp file and rename. Names must be unique. Data is laid out like the reference library.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// dtype mapping between the file format and torch.
DType dtype_from_torch(at::ScalarType t);  // throws Error(Format) for unsupported types
at::ScalarType dtype_to_torch(DType d);

}  // namespace lumen
