// The organism's agreement grammar and its word-level tokenizer. Sentences are drawn from a small
// lexicon by construction; every verb agrees with its own subject (the "controller"), and a noun
// of either number may stand between them. Test pairs are drawn first and their prefixes are
// withheld from training, so test accuracy is measured on sentences the model never saw.
#include <algorithm>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "lumen/circuits_organism.h"
#include "lumen/error.h"
#include "lumen/files.h"

namespace lumen {
namespace {

using json = nlohmann::json;

struct Noun { const char* sg; const char* pl; };
struct Verb { const char* sg; const char* pl; };

// Irregular plurals (child/children, mouse/mice) keep "add s" from being the only cue to number.
const Noun kNouns[] = {{"dog", "dogs"},         {"cat", "cats"},         {"bird", "birds"},
                       {"horse", "horses"},     {"farmer", "farmers"},   {"teacher", "teachers"},
                       {"doctor", "doctors"},   {"girl", "girls"},       {"boy", "boys"},
                       {"king", "kings"},       {"pilot", "pilots"},     {"baker", "bakers"},
                       {"friend", "friends"},   {"singer", "singers"},   {"child", "children"},
                       {"mouse", "mice"}};
const char* kAdjectives[] = {"old", "young", "small", "big", "tall", "quiet"};
const char* kPrepositions[] = {"near", "behind", "beside", "with", "under"};
// Transitive verbs of relative clauses.
const Verb kClauseVerbs[] = {{"chases", "chase"}, {"sees", "see"}, {"likes", "like"},
                             {"follows", "follow"}, {"helps", "help"}};
// Main verbs, each with the complements that may follow it.
struct MainVerb { Verb v; std::vector<const char*> tails; };
const MainVerb kMainVerbs[] = {
    {{"is", "are"}, {"happy", "tired", "here", "late"}},
    {{"was", "were"}, {"happy", "tired", "here", "late"}},
    {{"has", "have"}, {"a hat", "a ball", "a home"}},
    {{"runs", "run"}, {"", "today", "again"}},
    {{"sleeps", "sleep"}, {"", "today", "again"}},
    {{"sings", "sing"}, {"", "today", "again"}},
    {{"waits", "wait"}, {"", "today", "again"}},
};
constexpr int64_t kNumNouns = sizeof(kNouns) / sizeof(kNouns[0]);
constexpr int64_t kNumAdj = sizeof(kAdjectives) / sizeof(kAdjectives[0]);

class Rng {
 public:
  explicit Rng(uint64_t seed) : g_(seed) {}
  int64_t below(int64_t n) { return static_cast<int64_t>(g_() % static_cast<uint64_t>(n)); }
  bool chance(double p) { return static_cast<double>(g_() >> 11) * 0x1.0p-53 < p; }
 private:
  std::mt19937_64 g_;
};

// A sentence under construction: words, plus the bookkeeping a test pair needs.
struct Draft {
  std::vector<std::string> words;
  int64_t controller_word = -1, distractor_word = -1, verb_word = -1;
  int64_t controller_noun = -1;
  bool controller_plural = false, distractor_plural = false;
  std::vector<std::pair<int64_t, std::string>> points;  // (verb word index, construction)
};

// "[The|the] [adj] noun": returns the noun's word index.
int64_t add_np(Draft& d, Rng& r, int64_t noun, bool plural, bool first) {
  d.words.push_back(first ? "The" : "the");
  if (r.chance(0.3)) d.words.push_back(kAdjectives[r.below(kNumAdj)]);
  d.words.push_back(plural ? kNouns[noun].pl : kNouns[noun].sg);
  return static_cast<int64_t>(d.words.size()) - 1;
}

int64_t other_noun(Rng& r, int64_t not_this) {
  int64_t n = r.below(kNumNouns - 1);
  return n >= not_this ? n + 1 : n;
}

void add_main_vp(Draft& d, Rng& r, bool plural, const std::string& construction) {
  const MainVerb& mv = kMainVerbs[r.below(sizeof(kMainVerbs) / sizeof(kMainVerbs[0]))];
  d.points.emplace_back(static_cast<int64_t>(d.words.size()), construction);
  d.words.push_back(plural ? mv.v.pl : mv.v.sg);
  const std::string tail = mv.tails[r.below(mv.tails.size())];
  std::istringstream ts(tail);
  for (std::string w; ts >> w;) d.words.push_back(w);
  d.words.push_back(".");
}

// One sentence of `construction`. For the test pairs, distractor_plural is forced to the other
// number; for training it is drawn (same number with probability same_rate).
Draft draw(Rng& r, const std::string& construction, double same_rate) {
  Draft d;
  const int64_t subj = r.below(kNumNouns), dist = other_noun(r, subj);
  const bool sp = r.chance(0.5), dp = r.chance(same_rate) ? sp : !sp;
  const int64_t s_word = add_np(d, r, subj, sp, true);
  if (construction == "simple") {
    d.controller_word = s_word;
    d.controller_noun = subj;
    d.controller_plural = sp;
    add_main_vp(d, r, sp, "simple");
    return d;
  }
  d.controller_word = s_word;
  d.controller_noun = subj;
  d.controller_plural = sp;
  d.distractor_plural = dp;
  if (construction == "across_pp") {
    d.words.push_back(kPrepositions[r.below(sizeof(kPrepositions) / sizeof(kPrepositions[0]))]);
    d.distractor_word = add_np(d, r, dist, dp, false);
    add_main_vp(d, r, sp, "across_pp");
  } else if (construction == "across_src") {
    d.words.push_back("that");
    const Verb& cv = kClauseVerbs[r.below(sizeof(kClauseVerbs) / sizeof(kClauseVerbs[0]))];
    d.points.emplace_back(static_cast<int64_t>(d.words.size()), "within_src");
    d.words.push_back(sp ? cv.pl : cv.sg);
    d.distractor_word = add_np(d, r, dist, dp, false);
    add_main_vp(d, r, sp, "across_src");
  } else if (construction == "across_orc" || construction == "within_orc") {
    d.words.push_back("that");
    d.distractor_word = add_np(d, r, dist, dp, false);
    const Verb& cv = kClauseVerbs[r.below(sizeof(kClauseVerbs) / sizeof(kClauseVerbs[0]))];
    d.points.emplace_back(static_cast<int64_t>(d.words.size()), "within_orc");
    d.words.push_back(dp ? cv.pl : cv.sg);
    add_main_vp(d, r, sp, "across_orc");
    if (construction == "within_orc") {
      // The clause verb agrees with the clause's subject: that noun is the controller and the
      // main subject becomes the distractor.
      std::swap(d.controller_word, d.distractor_word);
      std::swap(d.controller_plural, d.distractor_plural);
      d.controller_noun = dist;
    }
  } else {
    throw Error(ErrorKind::Arg, "sva grammar: unknown construction '" + construction + "'");
  }
  return d;
}

std::string join(const std::vector<std::string>& w, int64_t n) {
  std::string s;
  for (int64_t i = 0; i < n; ++i) s += (i ? " " : "") + w[i];
  return s;
}

// The verb word of d's point for `construction` (its verb index), or -1.
int64_t point_of(const Draft& d, const std::string& construction) {
  for (auto& p : d.points)
    if (p.second == construction) return p.first;
  return -1;
}

std::string number_name(bool plural) { return plural ? "plural" : "singular"; }

// The other number's form of a noun or verb word of the lexicon.
std::string flip_word(const std::string& w) {
  for (auto& n : kNouns) {
    if (w == n.sg) return n.pl;
    if (w == n.pl) return n.sg;
  }
  for (auto& v : kClauseVerbs) {
    if (w == v.sg) return v.pl;
    if (w == v.pl) return v.sg;
  }
  for (auto& m : kMainVerbs) {
    if (w == m.v.sg) return m.v.pl;
    if (w == m.v.pl) return m.v.sg;
  }
  throw Error(ErrorKind::Arg, "sva grammar: '" + w + "' has no other number");
}

}  // namespace

int sva_number(const std::string& w) {
  for (auto& n : kNouns)
    if (w == n.sg || w == n.pl) return w == n.pl;
  for (auto& v : kClauseVerbs)
    if (w == v.sg || w == v.pl) return w == v.pl;
  for (auto& m : kMainVerbs)
    if (w == m.v.sg || w == m.v.pl) return w == m.v.pl;
  return -1;
}

bool sva_is_noun(const std::string& w) {
  for (auto& n : kNouns)
    if (w == n.sg || w == n.pl) return true;
  return false;
}

const std::vector<std::string>& sva_constructions() {
  static const std::vector<std::string> c = {"simple", "across_pp", "across_src", "across_orc", "within_orc"};
  return c;
}

SvaCorpus make_sva_corpus(const SvaGrammarOptions& opt) {
  require(opt.train_sentences > 0 && opt.test_pairs > 0 && opt.heldout_sentences >= 0, ErrorKind::Arg,
          "sva grammar: train_sentences and test_pairs must be positive");
  require(opt.same_number_rate >= 0 && opt.same_number_rate <= 1, ErrorKind::Arg,
          "sva grammar: same_number_rate must be in [0,1]");
  Rng r(opt.seed * 0x9E3779B97F4A7C15ull + 17);
  SvaCorpus out;

  // Test pairs first: the clean prefix has its distractor of the other number.
  std::set<std::string> held;  // every clean and patch prefix
  for (const auto& c : sva_constructions()) {
    // Simple prefixes are few; held-out ones always have an adjective ("The old baker"), so the
    // bare subjects stay in training, and only a quarter of the adjective-noun pairs are taken.
    const int64_t want = c == "simple" ? std::min<int64_t>(opt.test_pairs, kNumAdj * kNumNouns / 4) : opt.test_pairs;
    int64_t got = 0;
    for (int64_t attempt = 0; got < want && attempt < want * 200; ++attempt) {
      Draft d = draw(r, c, 0.0);
      if (c == "simple" && d.controller_word < 2) continue;
      const int64_t v = point_of(d, c);
      std::vector<std::string> patch = d.words;
      patch[d.controller_word] = flip_word(patch[d.controller_word]);
      SvaPair p;
      p.clean_prefix = join(d.words, v);
      p.patch_prefix = join(patch, v);
      if (held.count(p.clean_prefix) || held.count(p.patch_prefix)) continue;
      p.clean_answer = " " + d.words[v];
      p.patch_answer = " " + flip_word(d.words[v]);
      p.kind = c == "simple" ? number_name(d.controller_plural)
                                  : number_name(d.controller_plural) + "_" + number_name(d.distractor_plural);
      p.construction = c;
      p.controller_word = d.controller_word;
      p.distractor_word = d.distractor_word;
      held.insert(p.clean_prefix);
      held.insert(p.patch_prefix);
      out.test.push_back(std::move(p));
      ++got;
    }
    require(got == want, ErrorKind::Arg, "sva grammar: could only draw " + std::to_string(got) + " distinct '" + c + "' test pairs");
  }

  // Training text: constructions mixed, no agreement prefix withheld above.
  const std::vector<std::pair<std::string, double>> mix = {
      {"simple", 0.2}, {"across_pp", 0.3}, {"across_src", 0.2}, {"across_orc", 0.3}};
  const int64_t total = opt.train_sentences + opt.heldout_sentences;
  for (int64_t attempt = 0; static_cast<int64_t>(out.train.size() + out.heldout.size()) < total; ++attempt) {
    require(attempt < total * 20, ErrorKind::Arg, "sva grammar: too many training sentences rejected");
    double u = static_cast<double>(r.below(1000000)) / 1e6;
    std::string c = mix.back().first;
    for (auto& m : mix) {
      if (u < m.second) { c = m.first; break; }
      u -= m.second;
    }
    Draft d = draw(r, c, opt.same_number_rate);
    SvaSentence s;
    bool withheld = false;
    for (auto& pt : d.points) {
      std::string pre = join(d.words, pt.first);
      withheld = withheld || held.count(pre) > 0;
      s.prefixes.emplace_back(std::move(pre), pt.second);
    }
    if (withheld) continue;
    s.text = join(d.words, d.words.size());
    (static_cast<int64_t>(out.train.size()) < opt.train_sentences ? out.train : out.heldout).push_back(std::move(s));
  }

  std::set<std::string> words = {"The", "the", "that", ".", "a"};
  auto both = [&](const char* a, const char* b) {
    words.insert(a);
    words.insert(b);
  };
  for (auto& n : kNouns) both(n.sg, n.pl);
  for (auto* a : kAdjectives) words.insert(a);
  for (auto* p : kPrepositions) words.insert(p);
  for (auto& v : kClauseVerbs) both(v.sg, v.pl);
  for (auto& m : kMainVerbs) {
    both(m.v.sg, m.v.pl);
    for (auto* t : m.tails) {
      std::istringstream ts(t);
      for (std::string w; ts >> w;) words.insert(w);
    }
  }
  out.words.assign(words.begin(), words.end());
  return out;
}

void write_word_tokenizer(const std::vector<std::string>& words, const std::string& path) {
  const std::string mark = "\xE2\x96\x81";  // "▁", SentencePiece's word-start mark
  json vocab = json::object();
  json merges = json::array();
  int32_t next = 0;
  auto add = [&](const std::string& piece) {
    if (!vocab.contains(piece)) vocab[piece] = next++;
  };
  for (const char* s : {"<unk>", "<s>", "</s>"}) add(s);
  add(mark);
  for (int c = 33; c < 127; ++c) add(std::string(1, static_cast<char>(c)));  // character fallback
  // Each word is built left to right from "▁": merges only ever extend a word-initial piece, so
  // a lexicon word always ends as one token whatever the merge order.
  for (const auto& w : words) {
    require(!w.empty() && w.find(' ') == std::string::npos, ErrorKind::Arg, "word tokenizer: bad word '" + w + "'");
    std::string left = mark;
    for (char ch : w) {
      require(ch > 32 && ch < 127, ErrorKind::Arg, "word tokenizer: '" + w + "' is not printable ASCII");
      const std::string merged = left + ch;
      if (!vocab.contains(merged)) {
        add(merged);
        merges.push_back(json::array({left, std::string(1, ch)}));
      }
      left = merged;
    }
  }
  json added = json::array();
  for (int id = 0; id < 3; ++id) {
    const char* names[] = {"<unk>", "<s>", "</s>"};
    added.push_back({{"id", id}, {"content", names[id]}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  }
  json meta = {{"type", "Metaspace"}, {"replacement", mark}, {"prepend_scheme", "first"}, {"split", true}};
  json tok = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer", meta},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"pair", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                              {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}})},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder", meta},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", "<unk>"}, {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr}, {"fuse_unk", true}, {"byte_fallback", false}, {"vocab", vocab},
        {"merges", merges}}}};
  write_file_atomic(path, [&](std::ostream& o) { o << tok.dump(1) << "\n"; });
}

void write_sva_pairs(const std::vector<SvaPair>& pairs, const std::string& path) {
  write_file_atomic(path, [&](std::ostream& o) {
    for (const auto& p : pairs) {
      json j = {{"clean_prefix", p.clean_prefix}, {"patch_prefix", p.patch_prefix},
                {"clean_answer", p.clean_answer}, {"patch_answer", p.patch_answer},
                {"case", p.kind},           {"construction", p.construction},
                {"controller_word", p.controller_word}, {"distractor_word", p.distractor_word}};
      o << j.dump() << "\n";
    }
  });
}

}  // namespace lumen
