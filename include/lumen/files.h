// Small file helpers shared by every loader: read-only mmap, whole-file reads, atomic writes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <string>

namespace lumen {

// A private (copy-on-write) memory map of a whole file: in-place writes never reach the file. Shared so tensors viewing it can keep it alive.
class MappedFile {
 public:
  static std::shared_ptr<MappedFile> open(const std::string& path);  // throws Error(Io)
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

std::string read_file(const std::string& path);  // throws Error(Io) naming the path
bool file_exists(const std::string& path);
bool is_directory(const std::string& path);
std::string join_path(const std::string& dir, const std::string& name);
std::string parent_dir(const std::string& path);

// Writes through `fill` into path + ".tmp.<pid>", fsyncs, then renames over `path`, so a reader
// (or a crash) never sees a half-written file and the previous version survives a failed write.
void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& fill);

}  // namespace lumen
