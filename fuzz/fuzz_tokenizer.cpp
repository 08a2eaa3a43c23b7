// libFuzzer target: arbitrary bytes through the GPT-2, Llama 2 (SentencePiece .model) and tok512
// (llama2.c) tokenizers, then back. Every id must be in range and decoding must not fail. Exact
// round trips: GPT-2's byte-level BPE for any input; for valid UTF-8 also Llama 2 (unless the text
// holds a literal "▁", which decodes as ' ') and tok512 (byte fallback covers every character).
// Tokenizers load once from $LUMEN_SHARED (default ../shared, relative to the working directory).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "lumen/error.h"
#include "lumen/tokenizer.h"
#include "tokenizer/unicode.h"

namespace {

struct Tokenizers {
  std::unique_ptr<lumen::Tokenizer> gpt2, llama2, tok512;
};

const Tokenizers& tokenizers() {
  static const Tokenizers t = [] {
    const char* env = std::getenv("LUMEN_SHARED");
    const std::string dir = std::string(env && *env ? env : "../shared") + "/testdata/tokenizers/";
    try {
      Tokenizers t;
      t.gpt2 = lumen::load_tokenizer(dir + "gpt2");
      t.llama2 = lumen::load_sentencepiece(dir + "llama2/tokenizer.model");
      t.tok512 = lumen::load_llama2c_tokenizer(dir + "tok512/tok512.bin", 512);
      return t;
    } catch (const lumen::Error& e) {
      std::fprintf(stderr, "fuzz_tokenizer: cannot load tokenizers (set LUMEN_SHARED): %s\n", e.what());
      std::abort();
    }
  }();
  return t;
}

// Encodes, checks the ids, and decodes both whole and token by token.
std::string round_trip(const lumen::Tokenizer& tok, const std::string& text, bool add_bos) {
  const std::vector<int32_t> ids = tok.encode(text, add_bos);
  int32_t prev = -1;
  for (int32_t id : ids) {
    if (id < 0 || id >= tok.vocab_size()) {
      std::fprintf(stderr, "%s: id %d out of range\n", tok.kind().c_str(), id);
      std::abort();
    }
    tok.decode_step(prev, id);
    prev = id;
  }
  return tok.decode(ids);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Tokenizers& t = tokenizers();
  const std::string text(reinterpret_cast<const char*>(data), size);

  const bool utf8 = lumen::unicode::is_valid_utf8(text);
  const bool llama_exact = utf8 && text.find("\xE2\x96\x81") == std::string::npos;
  const struct {
    const lumen::Tokenizer& tok;
    bool add_bos, exact;
  } runs[] = {{*t.gpt2, false, true}, {*t.llama2, true, llama_exact}, {*t.tok512, true, utf8}};
  for (const auto& r : runs) {
    if (round_trip(r.tok, text, r.add_bos) != text && r.exact) {
      std::fprintf(stderr, "%s: decode(encode(x)) != x\n", r.tok.kind().c_str());
      std::abort();
    }
  }
  return 0;
}
