// Rank-ordered BPE: GPT-2's byte-level vocabulary (vocab.json + merges.txt, encoder.json +
// vocab.bpe) and Hugging Face tokenizer.json files with a "BPE" model, in either flavour:
//  - byte level (GPT-2): text bytes map to printable stand-in characters, words come from the
//    GPT-2 pre-tokenizer regex (written out by hand below);
//  - SentencePiece style (Llama): ' ' becomes "▁", a "▁" is prepended, characters missing from the
//    vocabulary fall back to "<0xXX>" byte pieces.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <mutex>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "lumen/error.h"
#include "lumen/files.h"
#include "lumen/tokenizer.h"
#include "tokenizer/internal.h"
#include "tokenizer/unicode.h"

namespace lumen {
namespace {

using json = nlohmann::json;

constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// ---- GPT-2 pre-tokenizer ------------------------------------------------------------------------
// The regex above, matched by hand over code points. Alternatives are tried in order at each
// position (regex alternation is first-match, not longest-match); the classes are disjoint.
enum class Cls : uint8_t { Letter, Number, Space, Other };

Cls classify(uint32_t cp) {
  if (unicode::is_letter(cp)) return Cls::Letter;
  if (unicode::is_number(cp)) return Cls::Number;
  if (unicode::is_whitespace(cp)) return Cls::Space;
  return Cls::Other;
}

void split_gpt2(std::string_view text, std::vector<std::string_view>& words) {
  std::vector<uint32_t> cps, offs;  // offs[i]: byte offset of char i; offs[n] == text.size()
  std::vector<Cls> cls;
  for (size_t i = 0; i < text.size();) {
    size_t len;
    const uint32_t cp = unicode::decode_utf8(text, i, &len);
    cps.push_back(cp);
    cls.push_back(classify(cp));
    offs.push_back(static_cast<uint32_t>(i));
    i += len;
  }
  const size_t n = cps.size();
  offs.push_back(static_cast<uint32_t>(text.size()));

  auto match_at = [&](size_t i) -> size_t {
    if (cps[i] == '\'' && i + 1 < n) {  // 's|'t|'re|'ve|'m|'ll|'d
      const uint32_t a = cps[i + 1];
      if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
      if (i + 2 < n) {
        const uint32_t b = cps[i + 2];
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
      }
    }
    // " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+": an optional U+0020, then a run of one class.
    const size_t k = (cps[i] == ' ' && i + 1 < n && cls[i + 1] != Cls::Space) ? i + 1 : i;
    if (cls[k] != Cls::Space) {
      size_t j = k + 1;
      while (j < n && cls[j] == cls[k]) ++j;
      return j;
    }
    // "\s+(?!\S)" backs off one char so a final space can lead the next word; else "\s+".
    size_t j = i + 1;
    while (j < n && cls[j] == Cls::Space) ++j;
    if (j == n || j - i == 1) return j;
    return j - 1;
  };
  for (size_t i = 0; i < n;) {
    const size_t j = match_at(i);
    words.push_back(text.substr(offs[i], offs[j] - offs[i]));
    i = j;
  }
}

// GPT-2's bytes_to_unicode(): printable bytes stand for themselves, the other 68 take U+0100.. in order.
std::vector<uint32_t> byte_to_codepoint() {
  std::vector<uint32_t> map(256);
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    map[b] = printable ? b : next++;
  }
  return map;
}

// ---- the tokenizer ------------------------------------------------------------------------------
struct AddedToken {
  std::string content;
  int32_t id;
  bool lstrip, rstrip;
};

enum class Prepend { Never, First, Always };

struct BpeConfig {
  std::string kind;
  bool byte_level = true;
  bool gpt2_split = true;         // split words with the GPT-2 regex (byte-level flavour)
  bool add_prefix_space = false;  // ByteLevel: prepend ' ' when the text does not start with one
  // SentencePiece flavour: normalizer steps, applied in order, then the Metaspace pre-tokenizer.
  std::vector<std::pair<std::string, std::string>> replaces;  // (from, to); from empty = prepend
  bool metaspace = false, metaspace_split = false;
  Prepend metaspace_prepend = Prepend::Never;
  std::string space_mark = std::string(tok::kSpaceMark);
  bool byte_fallback = false, fuse_unk = false, ignore_merges = false;
  int strip_decoded = 0;  // leading spaces the decoder removes (HF Strip / Metaspace decoders)
  int32_t unk_id = -1, bos_id = -1, eos_id = -1;
  bool adds_bos = false;
};

class BpeTokenizer final : public Tokenizer {
 public:
  BpeTokenizer(BpeConfig cfg, std::vector<std::string> pieces, std::vector<AddedToken> added,
               std::unordered_set<int32_t> control)
      : cfg_(std::move(cfg)), pieces_(std::move(pieces)), added_(std::move(added)) {
    for (size_t i = 0; i < pieces_.size(); ++i)
      if (!pieces_[i].empty()) piece_id_.emplace(pieces_[i], static_cast<int32_t>(i));
    control_.assign(pieces_.size(), false);
    for (int32_t id : control) control_[id] = true;
    std::sort(added_.begin(), added_.end(),
              [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
    const std::vector<uint32_t> b2c = byte_to_codepoint();
    std::unordered_map<uint32_t, int> c2b;
    for (int b = 0; b < 256; ++b) {
      std::string ch;
      unicode::append_utf8(ch, b2c[b]);
      c2b[b2c[b]] = b;
      byte_char_[b] = ch;
      if (cfg_.byte_level) {
        byte_id_[b] = lookup(ch);
      } else {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        byte_id_[b] = lookup(name);
      }
    }
    // What each id prints: byte-level pieces map back through bytes_to_unicode; SentencePiece-style
    // pieces turn "▁" into ' ' and "<0xXX>" into that byte.
    text_.resize(pieces_.size());
    for (size_t id = 0; id < pieces_.size(); ++id) {
      const std::string& p = pieces_[id];
      std::string& t = text_[id];
      if (cfg_.byte_level) {
        for (size_t i = 0; i < p.size();) {
          size_t len;
          const uint32_t cp = unicode::decode_utf8(p, i, &len);
          auto it = c2b.find(cp);
          if (it != c2b.end()) t += static_cast<char>(it->second);
          else t.append(p, i, len);
          i += len;
        }
      } else {
        const int b = tok::parse_byte_piece(p);
        t = b >= 0 ? std::string(1, static_cast<char>(b)) : tok::replace_all(p, cfg_.space_mark, " ");
      }
    }
  }

  void add_merge(int32_t left, int32_t right, int32_t merged, int32_t rank) {
    merges_.emplace(pair_key(left, right), Merge{rank, merged});  // first (best) rank wins
    pairs_.add_piece(pieces_[merged]);
  }
  int32_t lookup(const std::string& piece) const {
    auto it = piece_id_.find(piece);
    return it == piece_id_.end() ? -1 : it->second;
  }

  std::vector<int32_t> encode(const std::string& text, bool add_bos) const override {
    std::vector<int32_t> ids;
    if (add_bos && cfg_.bos_id >= 0) ids.push_back(cfg_.bos_id);
    // Added (special) tokens are cut out first and never reach the normalizer or the merges.
    size_t pos = 0;
    bool first = true;
    while (pos <= text.size()) {
      size_t at = text.size(), end = text.size();
      const AddedToken* hit = nullptr;
      for (const AddedToken& a : added_) {  // longest first, so the earliest longest match wins
        const size_t p = text.find(a.content, pos);
        if (p != std::string::npos && p < at) at = p, end = p + a.content.size(), hit = &a;
      }
      size_t seg_end = at;
      if (hit && hit->lstrip)
        while (seg_end > pos && std::isspace(static_cast<unsigned char>(text[seg_end - 1]))) --seg_end;
      if (seg_end > pos) encode_segment(std::string_view(text).substr(pos, seg_end - pos), first, ids);
      first = false;
      if (!hit) break;
      ids.push_back(hit->id);
      if (hit->rstrip)
        while (end < text.size() && std::isspace(static_cast<unsigned char>(text[end]))) ++end;
      pos = end;
    }
    return ids;
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    for (int32_t id : ids) {
      tok::check_id(id, vocab_size(), cfg_.kind.c_str());
      if (!control_[id]) out += text_[id];
    }
    int strip = cfg_.strip_decoded;
    size_t n = 0;
    while (strip-- > 0 && n < out.size() && out[n] == ' ') ++n;
    return out.substr(n);
  }

  std::string decode_step(int32_t prev, int32_t id) const override {
    tok::check_id(id, vocab_size(), cfg_.kind.c_str());
    if (control_[id]) return "";
    std::string t = text_[id];
    if (cfg_.strip_decoded > 0 && (prev < 0 || prev == cfg_.bos_id) && !t.empty() && t[0] == ' ')
      t.erase(0, 1);
    return t;
  }

  std::string piece(int32_t id) const override {
    tok::check_id(id, vocab_size(), cfg_.kind.c_str());
    return pieces_[id];
  }
  int32_t vocab_size() const override { return static_cast<int32_t>(pieces_.size()); }
  int32_t bos_id() const override { return cfg_.bos_id; }
  int32_t eos_id() const override { return cfg_.eos_id; }
  bool adds_bos_by_default() const override { return cfg_.adds_bos; }
  std::string kind() const override { return cfg_.kind; }

 private:
  struct Merge {
    int32_t rank, merged;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  void encode_segment(std::string_view seg, bool first, std::vector<int32_t>& ids) const {
    std::string norm;
    if (cfg_.byte_level) {
      if (cfg_.add_prefix_space && seg[0] != ' ') {
        norm = " ";
        norm += seg;
        seg = norm;
      }
      if (!cfg_.gpt2_split) return encode_word(seg, ids, false);
      std::vector<std::string_view> words;
      split_gpt2(seg, words);
      for (std::string_view w : words) encode_word(w, ids, true);
      return;
    }
    norm = std::string(seg);
    for (const auto& [from, to] : cfg_.replaces)
      norm = from.empty() ? (norm.empty() ? norm : to + norm) : tok::replace_all(norm, from, to);
    if (cfg_.metaspace) {
      norm = tok::replace_all(norm, " ", cfg_.space_mark);
      const bool prepend = cfg_.metaspace_prepend == Prepend::Always ||
                           (cfg_.metaspace_prepend == Prepend::First && first);
      if (prepend && norm.compare(0, cfg_.space_mark.size(), cfg_.space_mark) != 0)
        norm = cfg_.space_mark + norm;
    }
    const std::string_view all(norm);
    if (!cfg_.metaspace_split) return encode_word(all, ids, false);
    // Metaspace split: every "▁" starts a new word (HF's MergedWithNext).
    size_t start = 0;
    for (size_t p = all.find(cfg_.space_mark, 1); p != std::string_view::npos;
         p = all.find(cfg_.space_mark, p + 1)) {
      if (p > start) encode_word(all.substr(start, p - start), ids, true);
      start = p;
    }
    if (start < all.size()) encode_word(all.substr(start), ids, true);
  }

  // BPE for one word, memoized: ordinary text repeats a small set of words.
  void encode_word(std::string_view word, std::vector<int32_t>& ids, bool cacheable) const {
    if (word.empty()) return;
    cacheable = cacheable && word.size() <= 64;
    std::string key;
    if (cacheable) {
      key.assign(word);
      std::lock_guard<std::mutex> lock(cache_mu_);
      auto it = cache_.find(key);
      if (it != cache_.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> out = bpe(word, !cacheable);
    ids.insert(ids.end(), out.begin(), out.end());
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_mu_);
      if (cache_.size() >= kCacheLimit) cache_.clear();  // crude bound; refills with what recurs
      cache_.emplace(std::move(key), std::move(out));
    }
  }

  // `whole`: an entire text segment (no pre-tokenizer), merged in memoized parts.
  std::vector<int32_t> bpe(std::string_view word, bool whole) const {
    if (cfg_.ignore_merges) {  // a word that is itself a piece is taken whole (Llama 3)
      std::string mapped;
      if (cfg_.byte_level)
        for (char c : word) mapped += byte_char_[static_cast<unsigned char>(c)];
      const int32_t id = lookup(cfg_.byte_level ? mapped : std::string(word));
      if (id >= 0) return {id};
    }
    std::vector<int32_t> syms;
    if (cfg_.byte_level) {
      for (char c : word) {
        const int32_t id = byte_id_[static_cast<unsigned char>(c)];
        syms.push_back(id >= 0 ? id : cfg_.unk_id);
      }
    } else {
      bool prev_unk = false;
      for (size_t i = 0; i < word.size();) {
        const size_t len = unicode::char_len(word, i);
        int32_t id = lookup(std::string(word.substr(i, len)));
        if (id >= 0) {
          syms.push_back(id);
        } else if (cfg_.byte_fallback) {
          for (size_t k = 0; k < len; ++k) {
            const int32_t b = byte_id_[static_cast<unsigned char>(word[i + k])];
            syms.push_back(b >= 0 ? b : cfg_.unk_id);
          }
        } else if (!(cfg_.fuse_unk && prev_unk)) {
          syms.push_back(cfg_.unk_id);
        }
        prev_unk = id < 0;
        i += len;
      }
    }
    // Characters with neither a piece nor an unk token are dropped, as HF does.
    syms.erase(std::remove(syms.begin(), syms.end(), -1), syms.end());
    if (whole) merge_in_parts(syms);
    else merge(syms);
    return syms;
  }

  // Cuts where no merge result contains the two characters that meet (tok::CharPairs), so each
  // part merges alone exactly as it would inside the whole, and recurring parts hit the memo.
  void merge_in_parts(std::vector<int32_t>& syms) const {
    std::vector<int32_t> out, part;
    size_t begin = 0;
    for (size_t i = 1; i <= syms.size(); ++i) {
      if (i < syms.size() && pairs_.joinable(pieces_[syms[i - 1]], pieces_[syms[i]])) continue;
      part.assign(syms.begin() + begin, syms.begin() + i);
      begin = i;
      std::string key;
      if (part.size() > 1 && part.size() <= 32) {
        key.assign(reinterpret_cast<const char*>(part.data()), part.size() * sizeof(int32_t));
        std::lock_guard<std::mutex> lock(cache_mu_);
        if (auto it = part_cache_.find(key); it != part_cache_.end()) {
          out.insert(out.end(), it->second.begin(), it->second.end());
          continue;
        }
      }
      merge(part);
      out.insert(out.end(), part.begin(), part.end());
      if (!key.empty()) {
        std::lock_guard<std::mutex> lock(cache_mu_);
        if (part_cache_.size() >= kCacheLimit) part_cache_.clear();
        part_cache_.emplace(std::move(key), part);
      }
    }
    syms.swap(out);
  }

  // Applies merges lowest rank first, leftmost first on ties, like encoder.py's bpe() and HF's
  // word merge. Linked list + heap: Llama-style input may be one whole text, not a short word.
  void merge(std::vector<int32_t>& syms) const {
    const int n = static_cast<int>(syms.size());
    if (n < 2) return;
    struct Cand {
      int32_t rank;
      int left, right;
      int32_t left_id, right_id, merged;
    };
    auto worse = [](const Cand& a, const Cand& b) {
      return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
    };
    std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> heap(worse);
    std::vector<int> prev(n), next(n);
    std::vector<bool> alive(n, true);
    for (int i = 0; i < n; ++i) prev[i] = i - 1, next[i] = i + 1 < n ? i + 1 : -1;
    auto consider = [&](int l, int r) {
      if (l < 0 || r < 0) return;
      auto it = merges_.find(pair_key(syms[l], syms[r]));
      if (it != merges_.end()) heap.push({it->second.rank, l, r, syms[l], syms[r], it->second.merged});
    };
    for (int i = 0; i + 1 < n; ++i) consider(i, i + 1);
    while (!heap.empty()) {
      const Cand c = heap.top();
      heap.pop();
      if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right || syms[c.left] != c.left_id ||
          syms[c.right] != c.right_id)
        continue;  // stale: a neighbour merged first
      syms[c.left] = c.merged;
      alive[c.right] = false;
      next[c.left] = next[c.right];
      if (next[c.left] >= 0) prev[next[c.left]] = c.left;
      consider(prev[c.left], c.left);
      consider(c.left, next[c.left]);
    }
    int w = 0;
    for (int i = 0; i >= 0; i = next[i]) syms[w++] = syms[i];
    syms.resize(w);
  }

  static constexpr size_t kCacheLimit = 1 << 16;

  BpeConfig cfg_;
  std::vector<std::string> pieces_;  // id -> piece as written in the vocabulary ("" for holes)
  std::vector<std::string> text_;    // id -> bytes it decodes to
  std::vector<bool> control_;        // ids that decode to nothing
  std::vector<AddedToken> added_;
  std::unordered_map<std::string, int32_t> piece_id_;
  std::unordered_map<uint64_t, Merge> merges_;
  int32_t byte_id_[256];             // byte -> its initial symbol (byte-level) or "<0xXX>" piece
  std::string byte_char_[256];       // byte -> its bytes_to_unicode stand-in, UTF-8
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;       // word -> ids
  mutable std::unordered_map<std::string, std::vector<int32_t>> part_cache_;  // ids -> merged ids
  tok::CharPairs pairs_;             // character pairs inside merge results
};

// ---- loading ------------------------------------------------------------------------------------
json parse_json(const std::string& path, const std::string& what) {
  try {
    return json::parse(read_file(path));
  } catch (const json::exception& e) {
    throw Error(ErrorKind::Tokenizer, path + ": not valid JSON (expected " + what + "): " + e.what());
  }
}

// Pieces from a {"piece": id, ...} object.
std::vector<std::string> vocab_from_json(const json& v, const std::string& path) {
  require(v.is_object() && !v.empty(), ErrorKind::Tokenizer,
          path + ": expected a non-empty JSON object mapping pieces to ids");
  std::vector<std::string> pieces;
  for (auto it = v.begin(); it != v.end(); ++it) {
    require(it.value().is_number_integer() && it.value().get<int64_t>() >= 0 &&
                it.value().get<int64_t>() < (1 << 24),
            ErrorKind::Tokenizer, path + ": id of piece '" + it.key() + "' is not a small non-negative integer");
    const auto id = it.value().get<size_t>();
    if (id >= pieces.size()) pieces.resize(id + 1);
    pieces[id] = it.key();
  }
  return pieces;
}

void add_merge_checked(BpeTokenizer& t, const std::string& a, const std::string& b, int32_t rank,
                       const std::string& path) {
  const int32_t l = t.lookup(a), r = t.lookup(b), m = t.lookup(a + b);
  require(l >= 0 && r >= 0 && m >= 0, ErrorKind::Tokenizer,
          path + ": merge '" + a + " " + b + "' (rank " + std::to_string(rank) +
              ") uses or makes a piece missing from the vocabulary");
  t.add_merge(l, r, m, rank);
}

int32_t id_of(const std::vector<std::string>& pieces, const std::string& p) {
  auto it = std::find(pieces.begin(), pieces.end(), p);
  return it == pieces.end() ? -1 : static_cast<int32_t>(it - pieces.begin());
}

std::string str_or(const json& j, const char* key, const std::string& dflt) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : dflt;
}
bool bool_or(const json& j, const char* key, bool dflt) {
  auto it = j.find(key);
  return it != j.end() && it->is_boolean() ? it->get<bool>() : dflt;
}

[[noreturn]] void unsupported(const std::string& path, const std::string& what, const json& j) {
  throw Error(ErrorKind::Tokenizer, path + ": unsupported " + what + " " + j.dump().substr(0, 200) +
                                        " (lumen supports GPT-2 byte-level and Llama-style BPE)");
}

void parse_normalizer(const json& n, BpeConfig& cfg, const std::string& path) {
  if (n.is_null()) return;
  const std::string type = str_or(n, "type", "");
  if (type == "Sequence") {
    for (const json& s : n.at("normalizers")) parse_normalizer(s, cfg, path);
  } else if (type == "Prepend") {
    cfg.replaces.emplace_back("", n.at("prepend").get<std::string>());
  } else if (type == "Replace" && n.at("pattern").contains("String")) {
    cfg.replaces.emplace_back(n.at("pattern").at("String").get<std::string>(),
                              n.at("content").get<std::string>());
    if (cfg.replaces.back().first == " ") cfg.space_mark = cfg.replaces.back().second;
  } else if (type == "NFC") {
    // Accepted as a no-op: lumen has no composition tables; already-composed text (nearly all
    // text) is unchanged by NFC, decomposed input may tokenize differently from HF.
  } else {
    unsupported(path, "normalizer", n);
  }
}

Prepend prepend_of(const json& j) {
  const std::string scheme = str_or(j, "prepend_scheme", "");
  if (scheme == "first") return Prepend::First;
  if (scheme == "never") return Prepend::Never;
  if (scheme == "always") return Prepend::Always;
  return bool_or(j, "add_prefix_space", true) ? Prepend::Always : Prepend::Never;
}

void parse_pre_tokenizer(const json& p, BpeConfig& cfg, const std::string& path) {
  if (p.is_null()) return;
  const std::string type = str_or(p, "type", "");
  if (type == "Sequence") {
    for (const json& s : p.at("pretokenizers")) parse_pre_tokenizer(s, cfg, path);
  } else if (type == "ByteLevel") {
    cfg.byte_level = true;
    cfg.add_prefix_space = bool_or(p, "add_prefix_space", false);
    cfg.gpt2_split = cfg.gpt2_split || bool_or(p, "use_regex", true);
  } else if (type == "Split" && p.at("pattern").contains("Regex") &&
             p.at("pattern").at("Regex") == kGpt2Pattern && !bool_or(p, "invert", false)) {
    cfg.gpt2_split = true;
  } else if (type == "Metaspace") {
    cfg.metaspace = true;
    cfg.space_mark = str_or(p, "replacement", cfg.space_mark);
    cfg.metaspace_prepend = prepend_of(p);
    cfg.metaspace_split = bool_or(p, "split", true);
  } else {
    unsupported(path, "pre_tokenizer", p);
  }
}

int strip_of_decoder(const json& d) {
  if (d.is_null()) return 0;
  const std::string type = str_or(d, "type", "");
  if (type == "Sequence") {
    int n = 0;
    for (const json& s : d.at("decoders")) n += strip_of_decoder(s);
    return n;
  }
  if (type == "Strip" && str_or(d, "content", " ") == " ") return d.value("start", 0);
  if (type == "Metaspace") return prepend_of(d) == Prepend::Never ? 0 : 1;
  return 0;
}

// The BOS a TemplateProcessing post-processor puts before the text, if any.
int32_t template_bos(const json& pp, const std::vector<std::string>& pieces) {
  if (pp.is_null()) return -1;
  if (str_or(pp, "type", "") == "Sequence") {
    for (const json& s : pp.at("processors"))
      if (int32_t id = template_bos(s, pieces); id >= 0) return id;
    return -1;
  }
  if (str_or(pp, "type", "") != "TemplateProcessing") return -1;
  const json& single = pp.at("single");
  if (!single.is_array() || single.empty() || !single[0].contains("SpecialToken")) return -1;
  const std::string name = single[0].at("SpecialToken").at("id").get<std::string>();
  if (pp.contains("special_tokens") && pp["special_tokens"].contains(name)) {
    const json& ids = pp["special_tokens"][name].at("ids");
    if (ids.is_array() && !ids.empty()) return ids[0].get<int32_t>();
  }
  return id_of(pieces, name);
}

int32_t first_present(const std::vector<std::string>& pieces, std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (int32_t id = id_of(pieces, n); id >= 0) return id;
  return -1;
}

std::unique_ptr<Tokenizer> build_hf(const json& j, const std::string& path) {
  const json& model = j.at("model");
  const std::string type = str_or(model, "type", "BPE");
  require(type == "BPE", ErrorKind::Tokenizer,
          path + ": model type '" + type + "' is not supported (expected \"BPE\"; use the "
                 "SentencePiece .model file for unigram vocabularies)");
  require(str_or(model, "continuing_subword_prefix", "").empty() &&
              str_or(model, "end_of_word_suffix", "").empty(),
          ErrorKind::Tokenizer, path + ": continuing_subword_prefix/end_of_word_suffix are not supported");

  BpeConfig cfg;
  cfg.kind = "hf-bpe";
  cfg.byte_level = false;
  cfg.gpt2_split = false;
  parse_normalizer(j.value("normalizer", json()), cfg, path);
  parse_pre_tokenizer(j.value("pre_tokenizer", json()), cfg, path);
  cfg.byte_fallback = bool_or(model, "byte_fallback", false);
  cfg.fuse_unk = bool_or(model, "fuse_unk", false);
  cfg.ignore_merges = bool_or(model, "ignore_merges", false);
  if (!cfg.byte_level) cfg.strip_decoded = strip_of_decoder(j.value("decoder", json()));

  std::vector<std::string> pieces = vocab_from_json(model.at("vocab"), path);
  std::vector<AddedToken> added;
  std::unordered_set<int32_t> control;
  for (const json& a : j.value("added_tokens", json::array())) {
    AddedToken t{a.at("content").get<std::string>(), a.at("id").get<int32_t>(),
                 bool_or(a, "lstrip", false), bool_or(a, "rstrip", false)};
    require(t.id >= 0 && t.id < (1 << 24) && !t.content.empty(), ErrorKind::Tokenizer,
            path + ": added token '" + t.content + "' has a bad id or empty content");
    if (static_cast<size_t>(t.id) >= pieces.size()) pieces.resize(t.id + 1);
    pieces[t.id] = t.content;
    if (bool_or(a, "special", false)) control.insert(t.id);
    added.push_back(std::move(t));
  }
  cfg.unk_id = model.contains("unk_token") && model["unk_token"].is_string()
                   ? id_of(pieces, model["unk_token"].get<std::string>()) : -1;
  cfg.bos_id = template_bos(j.value("post_processor", json()), pieces);
  cfg.adds_bos = cfg.bos_id >= 0;
  if (cfg.bos_id < 0) cfg.bos_id = first_present(pieces, {"<s>", "<|begin_of_text|>", "<bos>", "<|endoftext|>"});
  cfg.eos_id = first_present(pieces, {"</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"});
  for (int32_t id : {cfg.bos_id, cfg.eos_id})
    if (id >= 0) control.insert(id);

  auto tok = std::make_unique<BpeTokenizer>(cfg, std::move(pieces), std::move(added), control);
  const json& merges = model.at("merges");
  require(merges.is_array(), ErrorKind::Tokenizer, path + ": model.merges must be an array");
  int32_t rank = 0;
  for (const json& m : merges) {
    if (m.is_string()) {  // "a b"
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ');
      require(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos, ErrorKind::Tokenizer,
              path + ": merge '" + s + "' is not two pieces separated by one space");
      add_merge_checked(*tok, s.substr(0, sp), s.substr(sp + 1), rank++, path);
    } else {  // ["a", "b"]
      require(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(), ErrorKind::Tokenizer,
              path + ": merge " + m.dump() + " is neither \"a b\" nor [\"a\", \"b\"]");
      add_merge_checked(*tok, m[0].get<std::string>(), m[1].get<std::string>(), rank++, path);
    }
  }
  return tok;
}

}  // namespace

std::unique_ptr<Tokenizer> load_gpt2_bpe(const std::string& vocab_json, const std::string& merges_txt) {
  std::vector<std::string> pieces =
      vocab_from_json(parse_json(vocab_json, "a GPT-2 {piece: id} vocabulary"), vocab_json);
  BpeConfig cfg;
  cfg.kind = "gpt2-bpe";
  // encoder.py has no special-token handling; <|endoftext|> serves as both ends, and BOS when asked.
  cfg.bos_id = cfg.eos_id = id_of(pieces, "<|endoftext|>");
  std::unordered_set<int32_t> control;
  if (cfg.eos_id >= 0) control.insert(cfg.eos_id);
  auto tok = std::make_unique<BpeTokenizer>(cfg, std::move(pieces), std::vector<AddedToken>{}, control);

  const std::string text = read_file(merges_txt);
  int32_t rank = 0;
  size_t line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string::npos) eol = text.size();
    std::string line = text.substr(pos, eol - pos);
    pos = eol + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
    const size_t sp = line.find(' ');
    require(sp != std::string::npos && sp > 0 && line.find(' ', sp + 1) == std::string::npos,
            ErrorKind::Tokenizer,
            merges_txt + ":" + std::to_string(line_no) + ": expected a merge \"a b\", got '" +
                line.substr(0, 80) + "'");
    add_merge_checked(*tok, line.substr(0, sp), line.substr(sp + 1), rank++, merges_txt);
  }
  require(rank > 0, ErrorKind::Tokenizer, merges_txt + ": no merges found (expected lines \"a b\")");
  return tok;
}

std::unique_ptr<Tokenizer> load_hf_tokenizer_json(const std::string& tokenizer_json) {
  const json j = parse_json(tokenizer_json, "a Hugging Face tokenizer.json");
  require(j.is_object() && j.contains("model"), ErrorKind::Tokenizer,
          tokenizer_json + ": expected a Hugging Face tokenizer.json with a \"model\" object");
  try {
    return build_hf(j, tokenizer_json);
  } catch (const json::exception& e) {
    throw Error(ErrorKind::Tokenizer, tokenizer_json + ": malformed tokenizer.json: " + e.what());
  }
}

}  // namespace lumen
