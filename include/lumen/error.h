// lumen::Error: the one exception type library code throws.
// A message is one line: what was being read (file, tensor, hook), what was expected, and a hint.
// Only the CLI's main() catches it, prints it and exits non-zero.
#pragma once

#include <stdexcept>
#include <string>

namespace lumen {

enum class ErrorKind { Io, Format, Config, Tokenizer, Hook, Sae, Shape, Arg, Runtime };

const char* error_kind_name(ErrorKind kind);

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message);
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

// Throws Error(kind, message) unless cond holds. Use for checks on user input and files.
inline void require(bool cond, ErrorKind kind, const std::string& message) {
  if (!cond) throw Error(kind, message);
}

}  // namespace lumen
