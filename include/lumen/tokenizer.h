// Tokenizers: GPT-2 byte-level BPE, SentencePiece (.model: BPE and unigram) and llama2.c's
// tokenizer.bin. Torch-free. Every tokenizer maps text <-> int32 ids and knows its BOS/EOS.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace lumen {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Encodes text. BOS is prepended only when add_bos is true and the tokenizer has one.
  virtual std::vector<int32_t> encode(const std::string& text, bool add_bos) const = 0;
  // Decodes ids to text. BOS/EOS/control pieces decode to nothing.
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  // The bytes a streaming generator prints for `id` following `prev`. For llama2.c tokenizers this
  // is exactly what run.c prints (its decode() and safe_printf() rules).
  virtual std::string decode_step(int32_t prev, int32_t id) const = 0;
  // The raw piece for display (e.g. "Ġthe", "▁the", "<0x0A>").
  virtual std::string piece(int32_t id) const = 0;
  virtual int32_t vocab_size() const = 0;

  virtual int32_t bos_id() const { return -1; }  // -1: none
  virtual int32_t eos_id() const { return -1; }
  // Whether this family's own convention prepends BOS (llama2.c/SentencePiece: yes; GPT-2: no).
  virtual bool adds_bos_by_default() const { return false; }
  // "gpt2-bpe", "hf-bpe", "sentencepiece-bpe", "sentencepiece-unigram", "llama2c"
  virtual std::string kind() const = 0;
};

// Loads a tokenizer from a file or a folder.
//  - folder: looks for tokenizer.json, vocab.json+merges.txt, encoder.json+vocab.bpe,
//    tokenizer.model, tokenizer.bin, tok*.bin (in that order);
//  - file: picks the format from the name/contents.
// vocab_size_hint is required for llama2.c .bin tokenizers (the file does not store it); -1 reads
// pieces until end of file. Throws Error(Tokenizer or Io) naming the path and what was expected.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path, int32_t vocab_size_hint = -1);

// Individual loaders, for callers that know the format.
std::unique_ptr<Tokenizer> load_gpt2_bpe(const std::string& vocab_json, const std::string& merges_txt);
std::unique_ptr<Tokenizer> load_hf_tokenizer_json(const std::string& tokenizer_json);
std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model_file);
std::unique_ptr<Tokenizer> load_llama2c_tokenizer(const std::string& bin_file, int32_t vocab_size);

}  // namespace lumen
