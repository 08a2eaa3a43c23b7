// SentencePiece .model files without libsentencepiece/libprotobuf (they crash alongside Debian's
// libtorch): a small protobuf reader for ModelProto, the normalizer (dummy prefix, whitespace
// rules, precompiled character maps) and both encoders, BPE by piece score (Llama 2, Gemma) and
// unigram by Viterbi. Behaviour follows sentencepiece's normalizer.cc, bpe_model.cc,
// unigram_model.cc and sentencepiece_processor.cc.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <unordered_map>

#include "lumen/error.h"
#include "lumen/files.h"
#include "lumen/tokenizer.h"
#include "tokenizer/internal.h"
#include "tokenizer/unicode.h"

namespace lumen {
namespace {

// ---- protobuf wire format -----------------------------------------------------------------------
class ProtoReader {
 public:
  ProtoReader(std::string_view buf, const std::string& path) : p_(buf), path_(path) {}

  // Reads the next tag; false at the end of the message.
  bool next(uint32_t* field, uint32_t* wire) {
    if (pos_ >= p_.size()) return false;
    const uint64_t tag = varint();
    *field = static_cast<uint32_t>(tag >> 3);
    *wire = static_cast<uint32_t>(tag & 7);
    if (*field == 0) fail("field number 0");
    return true;
  }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= p_.size()) fail("truncated varint");
      const auto b = static_cast<uint8_t>(p_[pos_++]);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    fail("varint longer than 10 bytes");
  }
  std::string_view bytes() {
    const uint64_t n = varint();
    if (n > p_.size() - pos_) fail("length-delimited field runs past the end");
    const std::string_view s = p_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  float fixed32_float() {
    if (p_.size() - pos_ < 4) fail("truncated fixed32");
    uint32_t bits = 0;
    for (int i = 0; i < 4; ++i) bits |= static_cast<uint32_t>(static_cast<uint8_t>(p_[pos_ + i])) << (8 * i);
    pos_ += 4;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
  void skip(uint32_t wire) {
    switch (wire) {
      case 0: varint(); break;
      case 1: advance(8); break;
      case 2: bytes(); break;
      case 5: advance(4); break;
      default: fail("unsupported wire type " + std::to_string(wire));
    }
  }
  void expect(uint32_t wire, uint32_t want, uint32_t field) {
    if (wire != want) fail("field " + std::to_string(field) + " has wire type " + std::to_string(wire));
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(ErrorKind::Tokenizer, path_ + ": not a valid SentencePiece model (" + what +
                                          " at byte " + std::to_string(pos_) + "; expected a ModelProto)");
  }

 private:
  void advance(size_t n) {
    if (p_.size() - pos_ < n) fail("truncated field");
    pos_ += n;
  }
  std::string_view p_;
  size_t pos_ = 0;
  const std::string& path_;
};

enum PieceType : int { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

struct Piece {
  std::string text;
  float score = 0;
  int type = kNormal;
};

struct SpModel {
  std::vector<Piece> pieces;
  int model_type = 1;  // 1 unigram, 2 BPE (trainer_spec.model_type)
  bool byte_fallback = false, treat_ws_as_suffix = false;
  int32_t unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
  bool add_dummy_prefix = true, remove_extra_ws = true, escape_ws = true;
  std::string charsmap;  // normalizer_spec.precompiled_charsmap
};

SpModel parse_model(std::string_view buf, const std::string& path) {
  SpModel m;
  ProtoReader r(buf, path);
  uint32_t f, w;
  while (r.next(&f, &w)) {
    if (f == 1) {  // repeated SentencePiece pieces
      r.expect(w, 2, f);
      ProtoReader pr(r.bytes(), path);
      Piece p;
      while (pr.next(&f, &w)) {
        if (f == 1) pr.expect(w, 2, f), p.text = std::string(pr.bytes());
        else if (f == 2) pr.expect(w, 5, f), p.score = pr.fixed32_float();
        else if (f == 3) pr.expect(w, 0, f), p.type = static_cast<int>(pr.varint());
        else pr.skip(w);
      }
      m.pieces.push_back(std::move(p));
    } else if (f == 2) {  // TrainerSpec
      r.expect(w, 2, f);
      ProtoReader tr(r.bytes(), path);
      while (tr.next(&f, &w)) {
        // int32 fields arrive as 64-bit two's complement varints; the cast restores -1.
        auto i32 = [&] { tr.expect(w, 0, f); return static_cast<int32_t>(tr.varint()); };
        if (f == 3) m.model_type = i32();
        else if (f == 24) m.treat_ws_as_suffix = i32() != 0;
        else if (f == 35) m.byte_fallback = i32() != 0;
        else if (f == 40) m.unk_id = i32();
        else if (f == 41) m.bos_id = i32();
        else if (f == 42) m.eos_id = i32();
        else if (f == 43) m.pad_id = i32();
        else tr.skip(w);
      }
    } else if (f == 3) {  // NormalizerSpec
      r.expect(w, 2, f);
      ProtoReader nr(r.bytes(), path);
      while (nr.next(&f, &w)) {
        if (f == 2) nr.expect(w, 2, f), m.charsmap = std::string(nr.bytes());
        else if (f == 3) nr.expect(w, 0, f), m.add_dummy_prefix = nr.varint() != 0;
        else if (f == 4) nr.expect(w, 0, f), m.remove_extra_ws = nr.varint() != 0;
        else if (f == 5) nr.expect(w, 0, f), m.escape_ws = nr.varint() != 0;
        else nr.skip(w);
      }
    } else {
      r.skip(w);
    }
  }
  return m;
}

// ---- precompiled character map ------------------------------------------------------------------
// <uint32 trie size><darts-clone double array><NUL-separated replacement strings>. The longest key
// that prefixes the input names its replacement (e.g. NFKC folding for nmt_nfkc models).
class CharsMap {
 public:
  CharsMap(const std::string& blob, const std::string& path) {
    if (blob.empty()) return;
    uint32_t trie_size = 0;
    if (blob.size() > 4) std::memcpy(&trie_size, blob.data(), 4);
    require(blob.size() > 4 && trie_size < blob.size() - 4 && trie_size % 4 == 0, ErrorKind::Tokenizer,
            path + ": precompiled_charsmap is broken (trie size exceeds the blob)");
    units_.resize(trie_size / 4);
    std::memcpy(units_.data(), blob.data() + 4, trie_size);
    normalized_ = blob.substr(4 + trie_size);
  }
  bool empty() const { return units_.empty(); }

  // Length of the longest matching key at s (0: none) and its replacement.
  size_t longest_prefix(std::string_view s, std::string_view* out) const {
    size_t best_len = 0;
    uint32_t node = 0;
    if (units_.empty()) return 0;
    node ^= offset(units_[0]);
    for (size_t i = 0; i < s.size(); ++i) {
      const auto c = static_cast<uint8_t>(s[i]);
      node ^= c;
      if (node >= units_.size()) break;
      const uint32_t unit = units_[node];
      if (label(unit) != c) break;
      node ^= offset(unit);
      if (node >= units_.size()) break;
      if (has_leaf(unit)) {
        const uint32_t value = units_[node] & 0x7FFFFFFFu;
        if (value >= normalized_.size()) break;
        best_len = i + 1;
        const size_t end = normalized_.find('\0', value);
        *out = std::string_view(normalized_).substr(value, end == std::string::npos ? std::string::npos : end - value);
      }
    }
    return best_len;
  }

 private:
  static bool has_leaf(uint32_t u) { return (u >> 8) & 1; }
  static uint32_t label(uint32_t u) { return u & ((1u << 31) | 0xFF); }
  static uint32_t offset(uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); }
  std::vector<uint32_t> units_;
  std::string normalized_;
};

// ---- the tokenizer ------------------------------------------------------------------------------
constexpr const char* kUnkSurface = " \xE2\x81\x87 ";  // " ⁇ ", what sentencepiece prints for <unk>
constexpr float kUnkPenalty = 10.0f;

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(SpModel m, const std::string& path)
      : m_(std::move(m)), charsmap_(m_.charsmap, path) {
    std::fill(std::begin(byte_id_), std::end(byte_id_), -1);
    const int32_t n = vocab_size();
    for (int32_t id = 0; id < n; ++id) {
      const Piece& p = m_.pieces[id];
      require(!p.text.empty() && p.type >= kNormal && p.type <= kByte, ErrorKind::Tokenizer,
              path + ": piece " + std::to_string(id) + " is empty or has an unknown type");
      if (p.type == kNormal || p.type == kUserDefined || p.type == kUnused) {
        pieces_.emplace(p.text, id);
        max_piece_len_ = std::max(max_piece_len_, p.text.size());
      }
      if (p.type == kUserDefined) user_defined_.emplace(p.text, id), max_user_len_ = std::max(max_user_len_, p.text.size());
      if (p.type == kNormal) min_score_ = std::min(min_score_, p.score), max_score_ = std::max(max_score_, p.score);
      if (p.type == kByte) {
        const int b = tok::parse_byte_piece(p.text);
        if (b >= 0) byte_id_[b] = id;
      }
    }
    for (int32_t* id : {&m_.bos_id, &m_.eos_id, &m_.pad_id})
      if (*id >= n) *id = -1;
    require(m_.unk_id >= 0 && m_.unk_id < n, ErrorKind::Tokenizer,
            path + ": trainer_spec.unk_id " + std::to_string(m_.unk_id) + " is not a piece id");
    require(m_.model_type == 1 || m_.model_type == 2, ErrorKind::Tokenizer,
            path + ": model_type " + std::to_string(m_.model_type) + " is not supported (expected 1 unigram or 2 BPE)");
    require(!m_.treat_ws_as_suffix, ErrorKind::Tokenizer,
            path + ": treat_whitespace_as_suffix models are not supported");
    if (m_.model_type == 2) {
      std::vector<std::pair<std::string, tok::ScoredPiece>> mergeable;
      for (int32_t id = 0; id < n; ++id)
        if (m_.pieces[id].type == kNormal || m_.pieces[id].type == kUserDefined)
          mergeable.push_back({m_.pieces[id].text, {id, m_.pieces[id].score}});
      bpe_ = std::make_unique<tok::ScoredBpe>(std::move(mergeable), -INFINITY);
    }
  }

  std::vector<int32_t> encode(const std::string& text, bool add_bos) const override {
    std::vector<int32_t> ids;
    if (add_bos && m_.bos_id >= 0) ids.push_back(m_.bos_id);
    const std::string norm = normalize(text);
    const std::vector<std::pair<std::string_view, int32_t>> segs =
        m_.model_type == 2 ? encode_bpe(norm) : encode_unigram(norm);
    // Unknown pieces become bytes under byte_fallback; otherwise a run of them becomes one <unk>.
    bool prev_unk = false;
    for (const auto& [w, id] : segs) {
      const bool unk = id < 0 || id == m_.unk_id;
      if (unk && m_.byte_fallback) {
        for (char c : w) {
          const int32_t b = byte_id_[static_cast<uint8_t>(c)];
          ids.push_back(b >= 0 ? b : m_.unk_id);
        }
      } else if (!(unk && prev_unk)) {
        ids.push_back(unk ? m_.unk_id : id);
      }
      prev_unk = unk;
    }
    return ids;
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    bool bos_ws_pending = true, bos_ws_seen = false;  // the dummy prefix to drop, once
    for (int32_t id : ids) {
      tok::check_id(id, vocab_size(), "SentencePiece");
      const Piece& p = m_.pieces[id];
      if (p.type == kByte) {
        out += static_cast<char>(tok::parse_byte_piece(p.text));
        continue;
      }
      if (bos_ws_seen || !out.empty()) bos_ws_pending = false;
      bos_ws_seen = false;
      if (p.type == kControl) continue;
      if (p.type == kUnknown) {
        out += kUnkSurface;
        continue;
      }
      std::string_view s = p.text;
      if (bos_ws_pending && (m_.add_dummy_prefix || m_.remove_extra_ws) &&
          s.substr(0, tok::kSpaceMark.size()) == tok::kSpaceMark) {
        s.remove_prefix(tok::kSpaceMark.size());
        bos_ws_seen = !m_.remove_extra_ws;  // with remove_extra_ws every leading space goes
      }
      out += tok::replace_all(s, tok::kSpaceMark, " ");
    }
    return out;
  }

  std::string decode_step(int32_t prev, int32_t id) const override {
    tok::check_id(id, vocab_size(), "SentencePiece");
    const Piece& p = m_.pieces[id];
    if (p.type == kByte) return std::string(1, static_cast<char>(tok::parse_byte_piece(p.text)));
    if (p.type == kControl) return "";
    if (p.type == kUnknown) return kUnkSurface;
    std::string t = tok::replace_all(p.text, tok::kSpaceMark, " ");
    if (m_.add_dummy_prefix && (prev < 0 || prev == m_.bos_id) && !t.empty() && t[0] == ' ') t.erase(0, 1);
    return t;
  }

  std::string piece(int32_t id) const override {
    tok::check_id(id, vocab_size(), "SentencePiece");
    return m_.pieces[id].text;
  }
  int32_t vocab_size() const override { return static_cast<int32_t>(m_.pieces.size()); }
  int32_t bos_id() const override { return m_.bos_id; }
  int32_t eos_id() const override { return m_.eos_id; }
  bool adds_bos_by_default() const override { return m_.bos_id >= 0; }
  std::string kind() const override {
    return m_.model_type == 2 ? "sentencepiece-bpe" : "sentencepiece-unigram";
  }

 private:
  // Longest user-defined piece at s[i] (they pass the normalizer untouched and never split), or 0.
  size_t user_defined_at(std::string_view s, size_t i) const {
    if (user_defined_.empty()) return 0;
    for (size_t len = std::min(max_user_len_, s.size() - i); len > 0; --len)
      if (user_defined_.count(std::string(s.substr(i, len)))) return len;
    return 0;
  }

  std::string normalize(std::string_view in) const {
    std::string out;
    // One normalized chunk at the front of `in`: a user-defined piece, a charsmap rule, or one
    // character (malformed UTF-8 becomes U+FFFD, one byte at a time).
    auto next_chunk = [&](std::string_view s, std::string_view* chunk) -> size_t {
      if (size_t n = user_defined_at(s, 0)) return *chunk = s.substr(0, n), n;
      if (size_t n = charsmap_.longest_prefix(s, chunk)) return n;
      size_t len;
      if (unicode::decode_utf8(s, 0, &len) == unicode::kReplacementChar && len == 1)
        return *chunk = "\xEF\xBF\xBD", 1;
      return *chunk = s.substr(0, len), len;
    };
    std::string_view chunk;
    if (m_.remove_extra_ws) {
      while (!in.empty()) {
        const size_t n = next_chunk(in, &chunk);
        if (chunk != " ") break;
        in.remove_prefix(n);
      }
    }
    if (in.empty()) return out;
    const std::string_view space = m_.escape_ws ? tok::kSpaceMark : " ";
    if (m_.add_dummy_prefix) out += space;
    bool prev_space = m_.remove_extra_ws;
    while (!in.empty()) {
      const size_t n = next_chunk(in, &chunk);
      while (prev_space && !chunk.empty() && chunk[0] == ' ') chunk.remove_prefix(1);
      if (!chunk.empty()) {
        for (char c : chunk) {
          if (c == ' ' && m_.escape_ws) out += space;
          else out += c;
        }
        prev_space = chunk.back() == ' ';
      }
      in.remove_prefix(n);
      if (!m_.remove_extra_ws) prev_space = false;
    }
    if (m_.remove_extra_ws)
      while (out.size() >= space.size() && out.compare(out.size() - space.size(), space.size(), space) == 0)
        out.resize(out.size() - space.size());
    return out;
  }

  int32_t find_piece(std::string_view s) const {
    auto it = pieces_.find(std::string(s));
    return it == pieces_.end() ? -1 : it->second;
  }

  // BPE by score (bpe_model.cc): characters (user-defined pieces stay whole and frozen), then
  // merges of the best-scoring adjacent pair. Unused pieces are left out of the merges here;
  // sentencepiece merges into them and splits them again at the end (no shipped model has any).
  std::vector<std::pair<std::string_view, int32_t>> encode_bpe(std::string_view norm) const {
    std::vector<tok::Symbol> syms;
    for (size_t i = 0; i < norm.size();) {
      tok::Symbol s;
      size_t n = user_defined_at(norm, i);
      s.frozen = n > 0;
      if (!n) n = unicode::char_len(norm, i);
      s.start = static_cast<uint32_t>(i);
      s.len = static_cast<uint32_t>(n);
      syms.push_back(s);
      i += n;
    }
    std::vector<std::pair<std::string_view, int32_t>> out;
    for (const tok::Symbol& s : bpe_->merge(norm, syms)) {
      const std::string_view w = norm.substr(s.start, s.len);
      out.emplace_back(w, find_piece(w));
    }
    return out;
  }

  // Unigram (unigram_model.cc): Viterbi over all segmentations into pieces; a character with no
  // single-character piece gets an <unk> node scored min_score - 10.
  std::vector<std::pair<std::string_view, int32_t>> encode_unigram(std::string_view norm) const {
    struct Node {
      float score = 0;
      int start = -1;
      int32_t id = -1;
    };
    const size_t n = norm.size();
    std::vector<Node> best(n + 1);
    best[0].start = 0;
    const float unk_score = min_score_ - kUnkPenalty;
    auto relax = [&](size_t end, size_t start, float score, int32_t id) {
      const float cand = score + best[start].score;
      if (best[end].start < 0 || cand > best[end].score) best[end] = {cand, static_cast<int>(start), id};
    };
    for (size_t s = 0; s < n;) {
      const size_t mblen = unicode::char_len(norm, s);
      bool single = false;
      for (size_t e = s + mblen; e <= n && e - s <= max_piece_len_; e += unicode::char_len(norm, e)) {
        const int32_t id = find_piece(norm.substr(s, e - s));
        if (id >= 0 && m_.pieces[id].type != kUnused) {
          const bool user = m_.pieces[id].type == kUserDefined;
          relax(e, s, user ? static_cast<float>(e - s) * max_score_ - 0.1f : m_.pieces[id].score, id);
          single = single || e - s == mblen;
        }
        if (e == n) break;
      }
      if (!single) relax(s + mblen, s, unk_score, m_.unk_id);
      s += mblen;
    }
    std::vector<std::pair<std::string_view, int32_t>> out;
    for (size_t e = n; e > 0; e = static_cast<size_t>(best[e].start))
      out.emplace_back(norm.substr(best[e].start, e - best[e].start), best[e].id);
    std::reverse(out.begin(), out.end());
    return out;
  }

  SpModel m_;
  CharsMap charsmap_;
  std::unique_ptr<tok::ScoredBpe> bpe_;                    // BPE models only
  std::unordered_map<std::string, int32_t> pieces_;        // normal, user-defined and unused
  std::unordered_map<std::string, int32_t> user_defined_;
  size_t max_piece_len_ = 0, max_user_len_ = 0;
  float min_score_ = FLT_MAX, max_score_ = FLT_MIN;         // over normal pieces, as sentencepiece
  int32_t byte_id_[256];                                   // byte -> "<0xXX>" piece, or -1
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model_file) {
  const auto file = MappedFile::open(model_file);
  const std::string_view buf(reinterpret_cast<const char*>(file->data()), file->size());
  SpModel m = parse_model(buf, model_file);
  require(!m.pieces.empty(), ErrorKind::Tokenizer,
          model_file + ": not a SentencePiece model (no pieces; expected a ModelProto .model file)");
  return std::make_unique<SentencePieceTokenizer>(std::move(m), model_file);
}

}  // namespace lumen
