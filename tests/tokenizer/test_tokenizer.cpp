// Tokenizer tests: every reference vector in ../shared/testdata/tokenizers, HF tokenizer.json built
// from the same vocabularies, a hand-built unigram SentencePiece model, and loader errors.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "common.h"
#include "lumen/error.h"
#include "lumen/files.h"
#include "lumen/tokenizer.h"
#include "tokenizer/unicode.h"

namespace {

using json = nlohmann::json;
using Ids = std::vector<int32_t>;

json load_vectors(const std::string& name) {
  return json::parse(lumen::read_file(lumen_test::shared_path("testdata/tokenizers/" + name + "/vectors.json")));
}

std::string tok_path(const std::string& rel) { return lumen_test::shared_path("testdata/tokenizers/" + rel); }

void write(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

bool all_ascii(const std::string& s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  return true;
}

// Expects f() to throw lumen::Error whose message names `path`.
template <class F>
void expect_error_naming(F f, const std::string& path) {
  try {
    f();
    ADD_FAILURE() << "no error for " << path;
  } catch (const lumen::Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

// ---- unicode ------------------------------------------------------------------------------------
TEST(Unicode, Classes) {
  using namespace lumen::unicode;
  EXPECT_TRUE(is_letter('a'));
  EXPECT_TRUE(is_letter(0xE9));     // é
  EXPECT_TRUE(is_letter(0x4E16));   // 世
  EXPECT_TRUE(is_letter(0x0928));   // न (Devanagari)
  EXPECT_FALSE(is_letter(0x093F));  // ि is a combining mark, not \p{L}
  EXPECT_TRUE(is_number('7'));
  EXPECT_TRUE(is_number(0x00BD));   // ½ is \p{N}
  EXPECT_TRUE(is_number(0x0663));   // Arabic-Indic three
  EXPECT_FALSE(is_number('x'));
  EXPECT_TRUE(is_whitespace(0xA0));  // NBSP
  EXPECT_TRUE(is_whitespace(0x3000));
  EXPECT_FALSE(is_whitespace(0x200B));  // zero-width space is not White_Space
  EXPECT_FALSE(is_whitespace(0x1C));    // str.isspace() says yes, `regex` says no
}

TEST(Unicode, Utf8) {
  using namespace lumen::unicode;
  std::string s;
  for (uint32_t cp : {0x41u, 0xE9u, 0x20ACu, 0x1F600u}) append_utf8(s, cp);
  EXPECT_EQ(s, "A\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
  size_t len;
  EXPECT_EQ(decode_utf8(s, 1, &len), 0xE9u);
  EXPECT_EQ(len, 2u);
  EXPECT_EQ(decode_utf8(s, 6, &len), 0x1F600u);
  EXPECT_EQ(len, 4u);
  EXPECT_TRUE(is_valid_utf8(s));
  EXPECT_FALSE(is_valid_utf8("\xC0\xAF"));      // overlong
  EXPECT_FALSE(is_valid_utf8("\xED\xA0\x80"));  // surrogate
  EXPECT_FALSE(is_valid_utf8("\xE2\x82"));      // truncated
  EXPECT_EQ(decode_utf8("\xFF", 0, &len), kReplacementChar);
  EXPECT_EQ(len, 1u);
}

// ---- GPT-2 --------------------------------------------------------------------------------------
void check_gpt2_vectors(const lumen::Tokenizer& tok, bool special_split) {
  const json v = load_vectors("gpt2");
  int checked = 0;
  for (const json& c : v["cases"]) {
    const std::string text = c["text"];
    const Ids want = c["ids"].get<Ids>();
    if (special_split && text == "<|endoftext|>") {
      EXPECT_EQ(tok.encode(text, false), Ids{50256});  // HF cuts added tokens out first
      continue;
    }
    EXPECT_EQ(tok.encode(text, false), want) << "text: " << text;
    if (c["decode_roundtrip"].get<bool>()) {
      EXPECT_EQ(tok.decode(want), text);
    }
    ++checked;
  }
  EXPECT_GE(checked, 45);
}

TEST(Gpt2, AllVectors) {
  LUMEN_REQUIRE_SHARED("testdata/tokenizers/gpt2");
  auto tok = lumen::load_tokenizer(tok_path("gpt2"));
  EXPECT_EQ(tok->kind(), "gpt2-bpe");
  EXPECT_EQ(tok->vocab_size(), 50257);
  EXPECT_EQ(tok->eos_id(), 50256);
  EXPECT_FALSE(tok->adds_bos_by_default());
  EXPECT_EQ(tok->piece(995), "\xC4\xA0world");  // "Ġworld"
  check_gpt2_vectors(*tok, false);
  EXPECT_EQ(tok->encode("Hello world", true), (Ids{50256, 15496, 995}));
  EXPECT_EQ(tok->decode_step(15496, 995), " world");
  // Encoding twice goes through the word cache and must agree.
  check_gpt2_vectors(*tok, false);
}

TEST(Gpt2, RoundTripsArbitraryBytes) {
  LUMEN_REQUIRE_SHARED("testdata/tokenizers/gpt2");
  auto tok = lumen::load_gpt2_bpe(tok_path("gpt2/encoder.json"), tok_path("gpt2/vocab.bpe"));
  const std::string bytes("a\xFF\xC3 \x80\xE2\x82\0z\r\n\xF0\x9F\x98\x80'll \xC0\xAF", 22);
  EXPECT_EQ(tok->decode(tok->encode(bytes, false)), bytes);
}

// tokenizer.json as Hugging Face writes it for GPT-2, built from encoder.json + vocab.bpe.
json gpt2_tokenizer_json(bool pair_merges, bool added_tokens) {
  const json enc = json::parse(lumen::read_file(tok_path("gpt2/encoder.json")));
  const std::string bpe = lumen::read_file(tok_path("gpt2/vocab.bpe"));
  json merges = json::array();
  size_t pos = bpe.find('\n') + 1;  // skip "#version: 0.2"
  while (pos < bpe.size()) {
    size_t eol = bpe.find('\n', pos);
    if (eol == std::string::npos) eol = bpe.size();
    const std::string line = bpe.substr(pos, eol - pos);
    pos = eol + 1;
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    if (pair_merges) merges.push_back(json::array({line.substr(0, sp), line.substr(sp + 1)}));
    else merges.push_back(line);
  }
  json j;
  j["version"] = "1.0";
  j["added_tokens"] = json::array();
  if (added_tokens)
    j["added_tokens"].push_back({{"id", 50256}, {"content", "<|endoftext|>"}, {"single_word", false},
                                 {"lstrip", false}, {"rstrip", false}, {"normalized", true}, {"special", true}});
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  j["post_processor"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
  j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  j["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", ""},
                {"end_of_word_suffix", ""}, {"fuse_unk", false}, {"byte_fallback", false},
                {"vocab", enc}, {"merges", merges}};
  return j;
}

TEST(HfTokenizerJson, Gpt2FromEncoderAndVocabBpe) {
  LUMEN_REQUIRE_SHARED("testdata/tokenizers/gpt2");
  const std::string dir = lumen_test::temp_dir("hfgpt2");
  write(dir + "/tokenizer.json", gpt2_tokenizer_json(false, false).dump());
  auto tok = lumen::load_tokenizer(dir);
  EXPECT_EQ(tok->kind(), "hf-bpe");
  check_gpt2_vectors(*tok, false);

  write(dir + "/tokenizer.json", gpt2_tokenizer_json(true, true).dump());
  auto tok2 = lumen::load_hf_tokenizer_json(dir + "/tokenizer.json");
  check_gpt2_vectors(*tok2, true);
  EXPECT_EQ(tok2->encode("a<|endoftext|>b", false), (Ids{64, 50256, 65}));
  EXPECT_EQ(tok2->decode({64, 50256, 65}), "ab");  // special tokens decode to nothing
}

// ---- Llama 2: SentencePiece .model and llama2.c tokenizer.bin ----------------------------------
TEST(Llama2, SentencePieceModelVectors) {
  LUMEN_REQUIRE_SHARED("testdata/tokenizers/llama2");
  auto tok = lumen::load_sentencepiece(tok_path("llama2/tokenizer.model"));
  EXPECT_EQ(tok->kind(), "sentencepiece-bpe");
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_TRUE(tok->adds_bos_by_default());
  const json v = load_vectors("llama2");
  for (const json& c : v["cases"]) {
    const std::string text = c["text"];
    const Ids want = c["sp_ids"].get<Ids>();
    const Ids got = tok->encode(text, false);
    EXPECT_EQ(got, want) << "text: " << text;
    std::vector<std::string> pieces;
    for (int32_t id : got) pieces.push_back(tok->piece(id));
    EXPECT_EQ(pieces, c["sp_pieces"].get<std::vector<std::string>>()) << "text: " << text;
    if (c["sp_decode_roundtrip"].get<bool>()) {
      EXPECT_EQ(tok->decode(want), text);
    }
    Ids with_bos{1};
    with_bos.insert(with_bos.end(), want.begin(), want.end());
    EXPECT_EQ(tok->encode(text, true), with_bos);
    EXPECT_EQ(tok->decode(with_bos), tok->decode(want));
  }
}

void check_runc_vectors(const lumen::Tokenizer& tok, const std::string& name) {
  const json v = load_vectors(name);
  int ascii_streams = 0;
  for (const json& c : v["cases"]) {
    const std::string text = c["text"];
    const Ids want = c["runc_ids"].get<Ids>();
    EXPECT_EQ(tok.encode(text, true), want) << "text: " << text;
    EXPECT_EQ(tok.decode(want), text);
    // run.c's printing reproduces ASCII text exactly; other bytes may be byte pieces it drops.
    if (all_ascii(text)) {
      std::string streamed;
      for (size_t i = 1; i < want.size(); ++i) streamed += tok.decode_step(want[i - 1], want[i]);
      EXPECT_EQ(streamed, text);
      ++ascii_streams;
    }
  }
  EXPECT_GT(ascii_streams, 20);
}

TEST(Llama2, TokenizerBinVectors) {
  LUMEN_REQUIRE_SHARED("testdata/tokenizers/llama2");
  auto tok = lumen::load_llama2c_tokenizer(tok_path("llama2/tokenizer.bin"), 32000);
  EXPECT_EQ(tok->kind(), "llama2c");
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(tok->piece(1), "\n<s>\n");
  check_runc_vectors(*tok, "llama2");
  const json v = load_vectors("llama2");
  for (const json& c : v["cases"])
    if (c["runc_equals_bos_plus_sp"].get<bool>()) {
      Ids sp{1};
      for (int32_t id : c["sp_ids"].get<Ids>()) sp.push_back(id);
      EXPECT_EQ(c["runc_ids"].get<Ids>(), sp);
    }
}

TEST(Llama2, RuncDecodeStep) {
  LUMEN_REQUIRE_SHARED("testdata/tokenizers/llama2");
  auto tok = lumen::load_tokenizer(tok_path("llama2/tokenizer.bin"), 32000);
  EXPECT_EQ(tok->decode_step(1, 15043), "Hello");   // leading space stripped after BOS
  EXPECT_EQ(tok->decode_step(15043, 3186), " world");
  EXPECT_EQ(tok->decode_step(5, 3 + '\n'), "\n");  // <0x0A>: whitespace prints
  EXPECT_EQ(tok->decode_step(5, 3 + 0x07), "");    // <0x07>: not printable, dropped
  EXPECT_EQ(tok->decode_step(5, 3 + 0xF0), "");    // a lone UTF-8 lead byte is dropped too
  EXPECT_EQ(tok->decode_step(5, 3), "");           // <0x00>
  EXPECT_EQ(tok->decode_step(5, 1), "\n<s>\n");    // run.c prints BOS/EOS pieces verbatim
  EXPECT_EQ(tok->decode({1, 15043, 3186, 2}), "Hello world");
}

TEST(Tok512, TokenizerBinVectors) {
  LUMEN_REQUIRE_SHARED("testdata/tokenizers/tok512");
  auto tok = lumen::load_tokenizer(tok_path("tok512"), 512);  // folder: finds tok512.bin
  EXPECT_EQ(tok->kind(), "llama2c");
  EXPECT_EQ(tok->vocab_size(), 512);
  check_runc_vectors(*tok, "tok512");
  // -1 reads to the end of the file, which holds exactly 512 tokens.
  EXPECT_EQ(lumen::load_llama2c_tokenizer(tok_path("tok512/tok512.bin"), -1)->vocab_size(), 512);
}

// tokenizer.json the way HF's LlamaConverter writes it: vocab and scores from tokenizer.bin, merges
// for every split of a piece into two pieces, ordered by the merged piece's score.
json llama_tokenizer_json() {
  const std::string bin = lumen::read_file(tok_path("llama2/tokenizer.bin"));
  std::vector<std::string> pieces;
  std::vector<float> scores;
  for (size_t pos = 4; pos + 8 <= bin.size();) {
    float score;
    int32_t len;
    std::memcpy(&score, bin.data() + pos, 4);
    std::memcpy(&len, bin.data() + pos + 4, 4);
    std::string p = bin.substr(pos + 8, len);
    pos += 8 + len;
    std::string out;
    for (char ch : p) out += ch == ' ' ? std::string("\xE2\x96\x81") : std::string(1, ch);
    pieces.push_back(out);
    scores.push_back(score);
  }
  pieces[1] = "<s>", pieces[2] = "</s>";
  json vocab = json::object();
  std::map<std::string, int> ids;
  for (size_t i = 0; i < pieces.size(); ++i) vocab[pieces[i]] = i, ids[pieces[i]] = static_cast<int>(i);
  struct M {
    float score;
    int l, r;
  };
  std::vector<M> ms;
  for (size_t i = 259; i < pieces.size(); ++i) {  // normal pieces follow <unk>, <s>, </s> and 256 bytes
    std::vector<M> local;
    const std::string& p = pieces[i];
    for (size_t k = 1; k < p.size(); ++k) {
      auto l = ids.find(p.substr(0, k)), r = ids.find(p.substr(k));
      if (l != ids.end() && r != ids.end() && l->second >= 259 && r->second >= 259)
        local.push_back({scores[i], l->second, r->second});
    }
    std::sort(local.begin(), local.end(), [](const M& a, const M& b) { return std::tie(a.l, a.r) < std::tie(b.l, b.r); });
    ms.insert(ms.end(), local.begin(), local.end());
  }
  std::stable_sort(ms.begin(), ms.end(), [](const M& a, const M& b) { return a.score > b.score; });
  json merges = json::array();
  for (const M& m : ms) merges.push_back(json::array({pieces[m.l], pieces[m.r]}));
  json j;
  j["added_tokens"] = json::array();
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", json::array({
      {{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}},
      {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}})}};
  j["pre_tokenizer"] = nullptr;
  j["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                                 {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
                         {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}};
  j["decoder"] = {{"type", "Sequence"}, {"decoders", json::array({
      {{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}},
      {{"type", "ByteFallback"}}, {{"type", "Fuse"}},
      {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}};
  j["model"] = {{"type", "BPE"}, {"unk_token", "<unk>"}, {"fuse_unk", true}, {"byte_fallback", true},
                {"vocab", vocab}, {"merges", merges}};
  return j;
}

TEST(HfTokenizerJson, LlamaStyleMatchesSentencePiece) {
  LUMEN_REQUIRE_SHARED("testdata/tokenizers/llama2");
  const std::string dir = lumen_test::temp_dir("hfllama");
  write(dir + "/tokenizer.json", llama_tokenizer_json().dump());
  auto tok = lumen::load_tokenizer(dir + "/tokenizer.json");
  EXPECT_EQ(tok->kind(), "hf-bpe");
  EXPECT_TRUE(tok->adds_bos_by_default());
  EXPECT_EQ(tok->bos_id(), 1);
  const json v = load_vectors("llama2");
  for (const json& c : v["cases"]) {
    const std::string text = c["text"];
    const Ids want = c["sp_ids"].get<Ids>();
    EXPECT_EQ(tok->encode(text, false), want) << "text: " << text;
    EXPECT_EQ(tok->decode(want), text);
  }
  EXPECT_EQ(tok->encode("Hello world", true), (Ids{1, 15043, 3186}));

  // The older Metaspace pre-tokenizer spelling splits words at "▁" first; on single-spaced text
  // without a leading space it gives the same ids.
  json meta = llama_tokenizer_json();
  meta["normalizer"] = nullptr;
  meta["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"add_prefix_space", true}};
  meta["decoder"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"add_prefix_space", true}};
  write(dir + "/tokenizer.json", meta.dump());
  auto mtok = lumen::load_tokenizer(dir);
  for (const json& c : v["cases"]) {
    const std::string text = c["text"];
    if (text.empty() || text[0] == ' ' || text.find("  ") != std::string::npos) continue;
    if (text.find('\n') != std::string::npos || text.find('\t') != std::string::npos) continue;
    EXPECT_EQ(mtok->encode(text, false), c["sp_ids"].get<Ids>()) << "text: " << text;
    EXPECT_EQ(mtok->decode(c["sp_ids"].get<Ids>()), text);
  }

  // Rank-ordered HF merges and score-ordered SentencePiece merges are different engines (and the
  // latter cuts texts into memoized parts): they must agree on a whole corpus, as must run.c's.
  if (!lumen_test::path_exists(lumen_test::shared_path("data/tinystories/train.txt"))) return;
  const std::string text = lumen::read_file(lumen_test::shared_path("data/tinystories/train.txt")).substr(0, 300000);
  auto sp = lumen::load_sentencepiece(tok_path("llama2/tokenizer.model"));
  const auto t0 = std::chrono::steady_clock::now();
  const Ids hf_ids = tok->encode(text, false);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ speed    ] HF Llama-style encode: %zu bytes in %.3f s\n", text.size(), s);
  const Ids sp_ids = sp->encode(text, false);
  EXPECT_TRUE(hf_ids == sp_ids);
  Ids runc = lumen::load_llama2c_tokenizer(tok_path("llama2/tokenizer.bin"), 32000)->encode(text, false);
  EXPECT_TRUE(runc == sp_ids);
}

// ---- a hand-built unigram SentencePiece model ---------------------------------------------------
std::string varint(uint64_t v) {
  std::string s;
  do {
    s += static_cast<char>((v & 0x7F) | (v > 0x7F ? 0x80 : 0));
    v >>= 7;
  } while (v);
  return s;
}
std::string field_varint(int f, uint64_t v) { return varint(f << 3) + varint(v); }
std::string field_bytes(int f, const std::string& b) { return varint((f << 3) | 2) + varint(b.size()) + b; }
std::string field_float(int f, float x) {
  std::string s = varint((f << 3) | 5);
  char b[4];
  std::memcpy(b, &x, 4);
  return s + std::string(b, 4);
}

std::string unigram_model(bool byte_fallback) {
  const std::string sp = "\xE2\x96\x81";
  struct P {
    std::string text;
    float score;
    int type;
  };
  std::vector<P> ps = {{"<unk>", 0, 2}, {"<s>", 0, 3}, {"</s>", 0, 3}, {sp, -2, 1},  {"a", -2, 1},
                       {"b", -2, 1},    {"c", -3, 1},  {sp + "a", -3, 1}, {"ab", -1.5f, 1}, {sp + "ab", -5, 1},
                       {"abc", -4, 1},  {"bc", -1, 1}};
  if (byte_fallback) ps.push_back({"<0x7A>", 0, 6});  // 'z'
  std::string m;
  for (const P& p : ps) m += field_bytes(1, field_bytes(1, p.text) + field_float(2, p.score) + field_varint(3, p.type));
  m += field_bytes(2, field_varint(3, 1) + field_varint(35, byte_fallback) + field_varint(40, 0) +
                          field_varint(41, 1) + field_varint(42, 2) + field_varint(43, static_cast<uint64_t>(-1)));
  m += field_bytes(3, field_bytes(1, "identity") + field_varint(3, 1) + field_varint(4, 1) + field_varint(5, 1));
  return m;
}

TEST(SentencePiece, HandBuiltUnigramViterbi) {
  const std::string dir = lumen_test::temp_dir("unigram");
  write(dir + "/tokenizer.model", unigram_model(false));
  auto tok = lumen::load_tokenizer(dir);
  EXPECT_EQ(tok->kind(), "sentencepiece-unigram");
  // "▁abc": ▁a + bc scores -4, better than ▁+abc (-6), ▁+ab+c (-6.5) or ▁ab+c (-8).
  EXPECT_EQ(tok->encode("abc", false), (Ids{7, 11}));
  EXPECT_EQ(tok->encode("abc", true), (Ids{1, 7, 11}));
  // Extra whitespace is removed, inner spaces become ▁.
  EXPECT_EQ(tok->encode("  abc  bc ", false), (Ids{7, 11, 3, 11}));
  EXPECT_EQ(tok->decode({1, 7, 11, 3, 11, 2}), "abc bc");
  // 'z' has no piece: <unk> scored min_score - 10; ▁+ab+<unk> (-18.5) beats ▁ab+<unk> (-20).
  EXPECT_EQ(tok->encode("abz", false), (Ids{3, 8, 0}));
  EXPECT_EQ(tok->encode("zz", false), (Ids{3, 0}));  // a run of unknowns is one <unk>
  EXPECT_EQ(tok->decode({3, 8, 0}), "ab \xE2\x81\x87 ");
  EXPECT_EQ(tok->encode("", true), (Ids{1}));
  EXPECT_EQ(tok->encode("   ", false), Ids{});

  write(dir + "/bf.model", unigram_model(true));
  auto bf = lumen::load_sentencepiece(dir + "/bf.model");
  EXPECT_EQ(bf->encode("abz", false), (Ids{3, 8, 12}));
  EXPECT_EQ(bf->decode({3, 8, 12}), "abz");
}

// ---- loading and errors -------------------------------------------------------------------------
TEST(LoadTokenizer, FindsFilesInFolders) {
  LUMEN_REQUIRE_SHARED("testdata/tokenizers");
  EXPECT_EQ(lumen::load_tokenizer(tok_path("gpt2"))->kind(), "gpt2-bpe");
  EXPECT_EQ(lumen::load_tokenizer(tok_path("llama2"))->kind(), "sentencepiece-bpe");  // .model before .bin
  EXPECT_EQ(lumen::load_tokenizer(tok_path("gpt2/vocab.bpe"))->kind(), "gpt2-bpe");
  EXPECT_EQ(lumen::load_tokenizer(tok_path("llama2/tokenizer.bin"), 32000)->kind(), "llama2c");
  EXPECT_EQ(lumen::load_tokenizer(tok_path("tok512/tok512.bin"), 512)->kind(), "llama2c");

  // An unsupported tokenizer.json gives way to the tokenizer.model beside it.
  const std::string dir = lumen_test::temp_dir("tokfolder");
  write(dir + "/tokenizer.json", "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}");
  write(dir + "/tokenizer.model", lumen::read_file(tok_path("llama2/tokenizer.model")));
  EXPECT_EQ(lumen::load_tokenizer(dir)->kind(), "sentencepiece-bpe");
}

TEST(LoadTokenizer, ErrorsNameThePath) {
  const std::string dir = lumen_test::temp_dir("tokerr");
  expect_error_naming([&] { lumen::load_tokenizer(dir + "/nope.model"); }, dir + "/nope.model");
  expect_error_naming([&] { lumen::load_tokenizer(dir); }, dir);  // empty folder

  const std::string junk = dir + "/junk";
  write(junk + ".model", "\x0A\xFF\xFF\xFF\xFF\x0F garbage");
  expect_error_naming([&] { lumen::load_tokenizer(junk + ".model"); }, junk + ".model");
  write(junk + ".json", "{\"model\": ");
  expect_error_naming([&] { lumen::load_tokenizer(junk + ".json"); }, junk + ".json");
  write(junk + "2.json", "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}");
  expect_error_naming([&] { lumen::load_tokenizer(junk + "2.json"); }, junk + "2.json");
  write(junk + ".bin", std::string("\x05\x00\x00\x00\x00\x00\x00\x00\xFF\xFF\xFF\x7F", 12));
  expect_error_naming([&] { lumen::load_tokenizer(junk + ".bin", 32000); }, junk + ".bin");
  write(junk + ".txt", "");
  expect_error_naming([&] { lumen::load_tokenizer(junk + ".txt"); }, junk + ".txt");

  const std::string gdir = dir + "/gpt2only";
  ASSERT_EQ(::mkdir(gdir.c_str(), 0755), 0);
  write(gdir + "/vocab.json", "{\"a\": 0}");
  expect_error_naming([&] { lumen::load_tokenizer(gdir + "/vocab.json"); }, gdir + "/vocab.json");
  write(gdir + "/merges.txt", "#version: 0.2\na b\n");
  expect_error_naming([&] { lumen::load_tokenizer(gdir); }, gdir + "/merges.txt");  // b is unknown
}

TEST(LoadTokenizer, TruncatedRealFilesFail) {
  LUMEN_REQUIRE_SHARED("testdata/tokenizers");
  const std::string dir = lumen_test::temp_dir("toktrunc");
  const std::string model = lumen::read_file(tok_path("llama2/tokenizer.model"));
  write(dir + "/cut.model", model.substr(0, 1001));
  expect_error_naming([&] { lumen::load_sentencepiece(dir + "/cut.model"); }, dir + "/cut.model");
  const std::string bin = lumen::read_file(tok_path("llama2/tokenizer.bin"));
  write(dir + "/cut.bin", bin.substr(0, bin.size() / 2));
  expect_error_naming([&] { lumen::load_llama2c_tokenizer(dir + "/cut.bin", 32000); }, dir + "/cut.bin");
  const std::string enc = lumen::read_file(tok_path("gpt2/encoder.json"));
  write(dir + "/encoder.json", enc.substr(0, enc.size() / 2));
  write(dir + "/vocab.bpe", lumen::read_file(tok_path("gpt2/vocab.bpe")));
  expect_error_naming([&] { lumen::load_tokenizer(dir); }, dir + "/encoder.json");
}

TEST(LoadTokenizer, BadIdsThrow) {
  LUMEN_REQUIRE_SHARED("testdata/tokenizers/tok512");
  auto tok = lumen::load_tokenizer(tok_path("tok512/tok512.bin"), 512);
  EXPECT_THROW(tok->decode({512}), lumen::Error);
  EXPECT_THROW(tok->piece(-1), lumen::Error);
}

// ---- speed --------------------------------------------------------------------------------------
TEST(Gpt2, EncodesAMegabyteQuickly) {
  LUMEN_REQUIRE_SHARED("data/tinystories/train.txt");
  LUMEN_REQUIRE_SHARED("testdata/tokenizers/gpt2");
  auto tok = lumen::load_tokenizer(tok_path("gpt2"));
  std::string text = lumen::read_file(lumen_test::shared_path("data/tinystories/train.txt"));
  while (text.size() < (1u << 20)) text += text;
  text.resize(1u << 20);
  const auto t0 = std::chrono::steady_clock::now();
  const Ids ids = tok->encode(text, false);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ speed    ] GPT-2 encode: 1 MiB -> %zu tokens in %.3f s\n", ids.size(), s);
  EXPECT_EQ(tok->decode(ids), text);
  EXPECT_LT(s, 10.0);  // generous: shared CI machines; expect well under a second
}

}  // namespace
