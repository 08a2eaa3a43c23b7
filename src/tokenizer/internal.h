// Helpers shared by the tokenizer sources (defined in tokenizer.cpp). Private to src/tokenizer.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace lumen::tok {

// SentencePiece's visible space "▁" (U+2581); pieces use it where the text had ' '.
inline constexpr std::string_view kSpaceMark = "\xE2\x96\x81";

// "<0x0A>" -> 10; anything else -> -1. The byte-fallback piece spelling of SentencePiece and HF.
int parse_byte_piece(std::string_view piece);

std::string replace_all(std::string_view s, std::string_view from, std::string_view to);

// Throws Error(Tokenizer) unless 0 <= id < vocab_size; `who` names the tokenizer kind.
void check_id(int32_t id, int32_t vocab_size, const char* who);

// One symbol of a merge: bytes [start, start + len) of the buffer and its piece id (-1: none).
// Frozen symbols (SentencePiece user-defined pieces) never merge.
struct Symbol {
  uint32_t start = 0, len = 0;
  int32_t id = -1;
  bool frozen = false;
};

struct ScoredPiece {
  int32_t id = -1;  // -1: the string is not a piece
  float score = 0;
};

// The character pairs that occur inside some piece. Where two neighbouring symbols meet at a pair
// no piece contains, no merge can ever join them: the text can be cut there and each part merged
// (and memoized) alone, with the same result as merging it whole. Pieces must be valid UTF-8,
// else nothing is ever cut.
class CharPairs {
 public:
  void add_piece(std::string_view piece);
  // Whether some piece could span the end of `left` and the start of `right`.
  bool joinable(std::string_view left, std::string_view right) const;

 private:
  std::unordered_set<uint64_t> pairs_;
  bool usable_ = true;
};

// Score-driven BPE, shared by SentencePiece's BPE model and run.c's encode(): repeatedly merges the
// adjacent pair whose concatenation is a piece with the highest score, the leftmost on ties, until
// none is left. Only scores > min_score count (run.c starts its search at -1e10). A heap keeps
// this O(n log n) where run.c rescans every pair after each merge, and CharPairs cuts let whole
// texts (SentencePiece does not pre-split words) reuse memoized words.
class ScoredBpe {
 public:
  ScoredBpe(std::vector<std::pair<std::string, ScoredPiece>> pieces, float min_score);
  // Symbols must tile `buf` in order. Unmerged symbols keep their id; merged ones get the piece's.
  std::vector<Symbol> merge(std::string_view buf, const std::vector<Symbol>& syms) const;

 private:
  void merge_part(std::string_view buf, const Symbol* syms, size_t n, std::vector<Symbol>& out) const;
  ScoredPiece find(std::string_view s) const;

  std::unordered_map<std::string_view, ScoredPiece> pieces_;  // views into keys_
  std::vector<std::string> keys_;
  CharPairs pairs_;
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<Symbol>> cache_;
};

}  // namespace lumen::tok
