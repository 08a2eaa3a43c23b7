#include "lumen/error.h"

namespace lumen {

const char* error_kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::Io: return "io";
    case ErrorKind::Format: return "format";
    case ErrorKind::Config: return "config";
    case ErrorKind::Tokenizer: return "tokenizer";
    case ErrorKind::Hook: return "hook";
    case ErrorKind::Sae: return "sae";
    case ErrorKind::Shape: return "shape";
    case ErrorKind::Arg: return "argument";
    case ErrorKind::Runtime: return "runtime";
  }
  return "error";
}

Error::Error(ErrorKind kind, const std::string& message)
    : std::runtime_error(std::string(error_kind_name(kind)) + " error: " + message), kind_(kind) {}

}  // namespace lumen
