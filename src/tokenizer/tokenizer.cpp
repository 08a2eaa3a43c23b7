// load_tokenizer(): picks a tokenizer format from a folder's contents or a file's name and bytes.
// Also the helpers in internal.h that several tokenizer formats share.
#include "lumen/tokenizer.h"

#include <dirent.h>

#include <algorithm>
#include <fstream>
#include <queue>

#include "lumen/error.h"
#include "lumen/files.h"
#include "tokenizer/internal.h"
#include "tokenizer/unicode.h"

namespace lumen {
namespace tok {

int parse_byte_piece(std::string_view p) {
  if (p.size() != 6 || p.substr(0, 3) != "<0x" || p[5] != '>') return -1;
  int v = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = p[i];
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else return -1;
    v = v * 16 + d;
  }
  return v;
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (true) {
    const size_t j = from.empty() ? std::string_view::npos : s.find(from, i);
    if (j == std::string_view::npos) break;
    out.append(s.substr(i, j - i)).append(to);
    i = j + from.size();
  }
  out.append(s.substr(i));
  return out;
}

void check_id(int32_t id, int32_t vocab_size, const char* who) {
  require(id >= 0 && id < vocab_size, ErrorKind::Tokenizer,
          std::string(who) + " tokenizer: token id " + std::to_string(id) + " is outside [0, " +
              std::to_string(vocab_size) + ")");
}

void CharPairs::add_piece(std::string_view piece) {
  uint32_t prev = 0;
  for (size_t i = 0; i < piece.size();) {
    size_t len;
    const uint32_t cp = unicode::decode_utf8(piece, i, &len);
    if (cp == unicode::kReplacementChar && len == 1) usable_ = false;
    if (i > 0) pairs_.insert((static_cast<uint64_t>(prev) << 32) | cp);
    prev = cp;
    i += len;
  }
}

bool CharPairs::joinable(std::string_view left, std::string_view right) const {
  if (!usable_ || left.empty() || right.empty()) return true;
  size_t start = left.size() - 1;  // back to the lead byte of the last character
  while (start > 0 && left.size() - start < 4 && (static_cast<uint8_t>(left[start]) & 0xC0) == 0x80) --start;
  size_t llen, rlen;
  const uint32_t a = unicode::decode_utf8(left, start, &llen);
  const uint32_t b = unicode::decode_utf8(right, 0, &rlen);
  if (start + llen != left.size()) return true;  // malformed: stay safe, never cut
  return pairs_.count((static_cast<uint64_t>(a) << 32) | b) > 0;
}

ScoredBpe::ScoredBpe(std::vector<std::pair<std::string, ScoredPiece>> pieces, float min_score) {
  keys_.reserve(pieces.size());
  for (auto& p : pieces) keys_.push_back(std::move(p.first));
  for (size_t i = 0; i < keys_.size(); ++i) {
    if (!(pieces[i].second.score > min_score)) continue;  // can never win a merge
    pieces_.emplace(keys_[i], pieces[i].second);
    pairs_.add_piece(keys_[i]);
  }
}

ScoredPiece ScoredBpe::find(std::string_view s) const {
  auto it = pieces_.find(s);
  return it == pieces_.end() ? ScoredPiece{} : it->second;
}

std::vector<Symbol> ScoredBpe::merge(std::string_view buf, const std::vector<Symbol>& syms) const {
  std::vector<Symbol> out;
  out.reserve(syms.size());
  size_t begin = 0;
  for (size_t i = 1; i <= syms.size(); ++i) {
    if (i < syms.size() && !syms[i - 1].frozen && !syms[i].frozen &&
        pairs_.joinable(buf.substr(syms[i - 1].start, syms[i - 1].len), buf.substr(syms[i].start, syms[i].len)))
      continue;
    merge_part(buf, syms.data() + begin, i - begin, out);
    begin = i;
  }
  return out;
}

void ScoredBpe::merge_part(std::string_view buf, const Symbol* in, size_t count, std::vector<Symbol>& out) const {
  if (count == 1) return out.push_back(in[0]);
  // Memo key: the text plus its symbol lengths, which fix the outcome (ids follow from strings).
  const uint32_t base = in[0].start;
  const uint32_t bytes = in[count - 1].start + in[count - 1].len - base;
  std::string key;
  if (bytes <= 64) {
    key += static_cast<char>(count);
    for (size_t i = 0; i < count; ++i) key += static_cast<char>(in[i].len);
    key.append(buf.substr(base, bytes));
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (auto it = cache_.find(key); it != cache_.end()) {
      for (Symbol s : it->second) s.start += base, out.push_back(s);
      return;
    }
  }

  struct Cand {
    float score;
    int left, right;
    uint32_t len;
    int32_t id;
  };
  // Highest score on top; on ties the smaller left index, i.e. the leftmost pair.
  auto worse = [](const Cand& a, const Cand& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> heap(worse);
  const int n = static_cast<int>(count);
  std::vector<Symbol> syms(in, in + count);
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) prev[i] = i - 1, next[i] = i + 1 < n ? i + 1 : -1;

  auto consider = [&](int l, int r) {
    if (l < 0 || r < 0 || syms[l].frozen || syms[r].frozen) return;
    const uint32_t len = syms[l].len + syms[r].len;
    const ScoredPiece p = find(buf.substr(syms[l].start, len));
    if (p.id >= 0) heap.push({p.score, l, r, len, p.id});
  };
  for (int i = 0; i + 1 < n; ++i) consider(i, i + 1);

  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    // Stale when either side has merged since: the pair is gone or its span changed.
    if (syms[c.left].len == 0 || syms[c.right].len == 0 || next[c.left] != c.right ||
        syms[c.left].len + syms[c.right].len != c.len)
      continue;
    Symbol& l = syms[c.left];
    l.len = c.len;
    l.id = c.id;
    syms[c.right].len = 0;
    next[c.left] = next[c.right];
    if (next[c.left] >= 0) prev[next[c.left]] = c.left;
    consider(prev[c.left], c.left);
    consider(c.left, next[c.left]);
  }
  std::vector<Symbol> result;
  for (int i = 0; i >= 0; i = next[i]) result.push_back(syms[i]);
  out.insert(out.end(), result.begin(), result.end());
  if (!key.empty()) {
    for (Symbol& s : result) s.start -= base;
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cache_.size() >= (1u << 16)) cache_.clear();  // crude bound; refills with what recurs
    cache_.emplace(std::move(key), std::move(result));
  }
}

}  // namespace tok

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string base_name(const std::string& path) {
  const auto pos = path.find_last_of('/');
  return pos == std::string::npos ? path : path.substr(pos + 1);
}

std::string first_bytes(const std::string& path, size_t n) {
  std::ifstream in(path, std::ios::binary);
  std::string buf(n, '\0');
  in.read(buf.data(), static_cast<std::streamsize>(n));
  buf.resize(static_cast<size_t>(in.gcount()));
  return buf;
}

// The first "tok*.bin" in the folder by name (llama2.c ships tok512.bin, tok4096.bin, ...).
std::string find_tok_bin(const std::string& dir) {
  std::vector<std::string> hits;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name.rfind("tok", 0) == 0 && ends_with(name, ".bin") && file_exists(join_path(dir, name)))
        hits.push_back(name);
    }
    closedir(d);
  }
  std::sort(hits.begin(), hits.end());
  return hits.empty() ? std::string() : join_path(dir, hits.front());
}

std::unique_ptr<Tokenizer> load_pair(const std::string& vocab, const std::string& merges,
                                     const std::string& given) {
  require(file_exists(vocab) && file_exists(merges), ErrorKind::Io,
          given + ": a GPT-2 BPE vocabulary needs both " + base_name(vocab) + " and " +
              base_name(merges) + " in " + parent_dir(given));
  return load_gpt2_bpe(vocab, merges);
}

std::unique_ptr<Tokenizer> load_folder(const std::string& dir, int32_t vocab_size_hint) {
  auto in = [&](const char* name) { return join_path(dir, name); };
  if (file_exists(in("tokenizer.json"))) {
    try {
      return load_hf_tokenizer_json(in("tokenizer.json"));
    } catch (const Error& e) {
      // A tokenizer.json lumen cannot follow (a unigram model, an unsupported pre-tokenizer)
      // usually sits next to the SentencePiece model it was converted from: use the original.
      if (e.kind() != ErrorKind::Tokenizer || !file_exists(in("tokenizer.model"))) throw;
      return load_sentencepiece(in("tokenizer.model"));
    }
  }
  if (file_exists(in("vocab.json")) && file_exists(in("merges.txt")))
    return load_gpt2_bpe(in("vocab.json"), in("merges.txt"));
  if (file_exists(in("encoder.json")) && file_exists(in("vocab.bpe")))
    return load_gpt2_bpe(in("encoder.json"), in("vocab.bpe"));
  if (file_exists(in("tokenizer.model"))) return load_sentencepiece(in("tokenizer.model"));
  if (file_exists(in("tokenizer.bin"))) return load_llama2c_tokenizer(in("tokenizer.bin"), vocab_size_hint);
  const std::string tok_bin = find_tok_bin(dir);
  if (!tok_bin.empty()) return load_llama2c_tokenizer(tok_bin, vocab_size_hint);
  throw Error(ErrorKind::Tokenizer,
              dir + ": no tokenizer found (expected tokenizer.json, vocab.json+merges.txt, "
                    "encoder.json+vocab.bpe, tokenizer.model, tokenizer.bin or tok*.bin)");
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path, int32_t vocab_size_hint) {
  if (is_directory(path)) return load_folder(path, vocab_size_hint);
  require(file_exists(path), ErrorKind::Io, path + ": no such tokenizer file or folder");

  const std::string name = base_name(path);
  const std::string dir = parent_dir(path);
  if (name == "vocab.json" || name == "merges.txt")
    return load_pair(join_path(dir, "vocab.json"), join_path(dir, "merges.txt"), path);
  if (name == "encoder.json" || name == "vocab.bpe")
    return load_pair(join_path(dir, "encoder.json"), join_path(dir, "vocab.bpe"), path);
  if (ends_with(name, ".json")) return load_hf_tokenizer_json(path);
  if (ends_with(name, ".model")) return load_sentencepiece(path);
  if (ends_with(name, ".bin")) return load_llama2c_tokenizer(path, vocab_size_hint);

  // Unknown name: JSON starts with '{'; a ModelProto with field 1 (pieces) with tag byte 0x0A.
  const std::string head = first_bytes(path, 64);
  const size_t pos = head.find_first_not_of(" \t\r\n");
  if (pos != std::string::npos && head[pos] == '{') return load_hf_tokenizer_json(path);
  if (!head.empty() && head[0] == '\x0A') return load_sentencepiece(path);
  return load_llama2c_tokenizer(path, vocab_size_hint);
}

}  // namespace lumen
