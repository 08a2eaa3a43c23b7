// llama2.c's tokenizer.bin / tok*.bin, encoding and printing exactly like run.c (encode(),
// decode(), safe_printf()), so generations compare byte for byte with the C reference.
// Layout: int32 max_token_length, then per id: float32 score, int32 length, the piece's bytes.
// Pieces use a real ' ' where SentencePiece has "▁"; the vocab size comes from the model header.
#include <cstring>
#include <unordered_map>

#include "lumen/error.h"
#include "lumen/files.h"
#include "lumen/tokenizer.h"
#include "tokenizer/internal.h"

namespace lumen {
namespace {

constexpr int32_t kBos = 1, kEos = 2;
constexpr int32_t kByteOffset = 3;    // run.c: byte b falls back to id b + 3 ("<0x00>" is id 3)
constexpr float kMinMergeScore = -1e10f;  // run.c's best_score starts here and needs a strict >

// C-locale isprint()/isspace(); run.c never calls setlocale.
bool c_isprint(unsigned char c) { return c >= 0x20 && c <= 0x7E; }
bool c_isspace(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

bool is_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
int hex_val(char c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; }

// sscanf(piece, "<0x%02hhX>", &byte) == 1: the literal "<0x", then (after optional whitespace) a
// field of at most two chars, an optional sign and hex digits; the trailing '>' is not checked.
bool scan_byte_piece(const std::string& p, unsigned char* byte) {
  if (p.compare(0, 3, "<0x") != 0) return false;
  size_t i = 3;
  while (i < p.size() && c_isspace(static_cast<unsigned char>(p[i]))) ++i;
  size_t width = 2;
  bool neg = false;
  if (i < p.size() && (p[i] == '+' || p[i] == '-')) neg = p[i] == '-', ++i, --width;
  int v = 0, digits = 0;
  while (width > 0 && i < p.size() && is_hex(p[i])) v = v * 16 + hex_val(p[i]), ++i, --width, ++digits;
  if (digits == 0) return false;
  *byte = static_cast<unsigned char>(neg ? -v : v);
  return true;
}

class Llama2cTokenizer final : public Tokenizer {
 public:
  Llama2cTokenizer(std::vector<std::string> pieces, std::vector<float> scores)
      : pieces_(std::move(pieces)), bpe_(scored(pieces_, scores), kMinMergeScore) {
    for (size_t i = 0; i < pieces_.size(); ++i) ids_.emplace(pieces_[i], static_cast<int32_t>(i));
  }

  std::vector<int32_t> encode(const std::string& text, bool add_bos) const override {
    std::vector<int32_t> tokens;
    if (add_bos) tokens.push_back(kBos);
    // add_dummy_prefix: a separate " " token, only for non-empty text; merges absorb it later.
    if (!text.empty())
      if (int32_t dummy = lookup(" "); dummy >= 0) tokens.push_back(dummy);
    // One token per UTF-8 code point (at most 4 bytes), else one per byte.
    std::string cur;
    for (size_t i = 0; i < text.size(); ++i) {
      const auto c = static_cast<unsigned char>(text[i]);
      if ((c & 0xC0) != 0x80) cur.clear();
      cur += static_cast<char>(c);
      const auto next = static_cast<unsigned char>(i + 1 < text.size() ? text[i + 1] : '\0');
      if ((next & 0xC0) == 0x80 && cur.size() < 4) continue;
      if (int32_t id = lookup(cur); id >= 0) {
        tokens.push_back(id);
      } else {
        for (unsigned char b : cur) {
          const int32_t id = b + kByteOffset;
          tokens.push_back(id < vocab_size() ? id : 0);
        }
      }
      cur.clear();
    }
    // Best-score pair merges. The BOS takes part as in run.c (its "\n<s>\n" never merges).
    std::string buf;
    std::vector<tok::Symbol> syms;
    for (int32_t id : tokens) {
      tok::Symbol s;
      s.start = static_cast<uint32_t>(buf.size());
      s.len = static_cast<uint32_t>(pieces_[id].size());
      s.id = id;
      buf += pieces_[id];
      syms.push_back(s);
    }
    std::vector<int32_t> out;
    for (const tok::Symbol& s : bpe_.merge(buf, syms))
      out.push_back(s.id);
    return out;
  }

  // Whole-text decoding: BOS/EOS vanish, byte pieces become their byte, the dummy-prefix space
  // of the first piece is dropped (what run.c does after BOS, and SentencePiece at the start).
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    bool first = true;
    for (int32_t id : ids) {
      tok::check_id(id, vocab_size(), "llama2.c");
      if (id == kBos || id == kEos) continue;
      const std::string& p = pieces_[id];
      const int byte = tok::parse_byte_piece(p);
      if (byte >= 0) out += static_cast<char>(byte);
      else out.append(p, first && !p.empty() && p[0] == ' ' ? 1 : 0, std::string::npos);
      first = false;
    }
    return out;
  }

  // run.c's decode(prev, token) followed by safe_printf().
  std::string decode_step(int32_t prev, int32_t id) const override {
    tok::check_id(id, vocab_size(), "llama2.c");
    std::string piece = pieces_[id];
    if (prev == kBos && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
    unsigned char byte;
    if (scan_byte_piece(piece, &byte)) piece = byte == 0 ? std::string() : std::string(1, static_cast<char>(byte));
    if (piece.empty()) return "";
    if (piece.size() == 1) {
      const auto b = static_cast<unsigned char>(piece[0]);
      if (!(c_isprint(b) || c_isspace(b))) return "";  // a lone non-printable byte prints nothing
    }
    return piece;
  }

  std::string piece(int32_t id) const override {
    tok::check_id(id, vocab_size(), "llama2.c");
    return pieces_[id];
  }
  int32_t vocab_size() const override { return static_cast<int32_t>(pieces_.size()); }
  int32_t bos_id() const override { return kBos; }
  int32_t eos_id() const override { return kEos; }
  bool adds_bos_by_default() const override { return true; }
  std::string kind() const override { return "llama2c"; }

 private:
  int32_t lookup(const std::string& s) const {
    auto it = ids_.find(s);
    return it == ids_.end() ? -1 : it->second;
  }

  static std::vector<std::pair<std::string, tok::ScoredPiece>> scored(const std::vector<std::string>& pieces,
                                                                      const std::vector<float>& scores) {
    std::vector<std::pair<std::string, tok::ScoredPiece>> out;
    // First id wins for a repeated piece, like ids_ (run.c's bsearch would pick either).
    std::unordered_map<std::string, int32_t> seen;
    for (size_t i = 0; i < pieces.size(); ++i)
      if (seen.emplace(pieces[i], static_cast<int32_t>(i)).second)
        out.push_back({pieces[i], {static_cast<int32_t>(i), scores[i]}});
    return out;
  }

  std::vector<std::string> pieces_;
  tok::ScoredBpe bpe_;
  std::unordered_map<std::string, int32_t> ids_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_llama2c_tokenizer(const std::string& bin_file, int32_t vocab_size) {
  const auto file = MappedFile::open(bin_file);
  const uint8_t* p = file->data();
  const size_t size = file->size();
  const std::string expect =
      " (expected llama2.c tokenizer.bin: int32 max_token_length, then per token float32 score, "
      "int32 length, bytes)";
  require(vocab_size == -1 || vocab_size > kEos, ErrorKind::Tokenizer,
          bin_file + ": vocab_size " + std::to_string(vocab_size) + " is invalid (need > 2, or -1 to read to the end)");
  require(size >= 4, ErrorKind::Tokenizer, bin_file + ": file is too short" + expect);
  int32_t max_len;
  std::memcpy(&max_len, p, 4);
  require(max_len > 0 && max_len <= (1 << 16), ErrorKind::Tokenizer,
          bin_file + ": max_token_length " + std::to_string(max_len) + " is implausible" + expect);

  std::vector<std::string> pieces;
  std::vector<float> scores;
  size_t pos = 4;
  while (vocab_size < 0 ? pos < size : static_cast<int32_t>(pieces.size()) < vocab_size) {
    const std::string at = bin_file + ": token " + std::to_string(pieces.size()) + " at byte " + std::to_string(pos);
    require(size - pos >= 8, ErrorKind::Tokenizer,
            at + ": file ends inside the token header" +
                (vocab_size > 0 ? " (the model expects " + std::to_string(vocab_size) + " tokens)" : "") + expect);
    float score;
    int32_t len;
    std::memcpy(&score, p + pos, 4);
    std::memcpy(&len, p + pos + 4, 4);
    pos += 8;
    require(len >= 0 && len <= max_len && static_cast<size_t>(len) <= size - pos, ErrorKind::Tokenizer,
            at + ": length " + std::to_string(len) + " is negative, above max_token_length or past the end" + expect);
    std::string piece(reinterpret_cast<const char*>(p + pos), static_cast<size_t>(len));
    piece.resize(std::strlen(piece.c_str()));  // run.c sees C strings: a NUL ends the piece
    pieces.push_back(std::move(piece));
    scores.push_back(score);
    pos += static_cast<size_t>(len);
  }
  require(static_cast<int32_t>(pieces.size()) > kEos, ErrorKind::Tokenizer,
          bin_file + ": only " + std::to_string(pieces.size()) + " tokens" + expect);
  return std::make_unique<Llama2cTokenizer>(std::move(pieces), std::move(scores));
}

}  // namespace lumen
