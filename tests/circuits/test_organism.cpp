// The agreement organism: grammar invariants, the word tokenizer, and a reduced training run whose
// checkpoint loads through the CLI and agrees far above chance.
#include <gtest/gtest.h>

#include <cstdlib>
#include <set>
#include <sstream>
#include <sys/wait.h>

#include <nlohmann/json.hpp>

#include "common.h"
#include "lumen/circuits.h"
#include "lumen/circuits_organism.h"
#include "lumen/sae.h"
#include "lumen/error.h"
#include "lumen/files.h"
#include "lumen/model.h"
#include "lumen/tokenizer.h"

namespace {

std::vector<std::string> words_of(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> w;
  for (std::string x; in >> x;) w.push_back(x);
  return w;
}

lumen::SvaCorpus small_corpus(uint64_t seed) {
  lumen::SvaGrammarOptions g;
  g.seed = seed;
  g.train_sentences = 3000;
  g.test_pairs = 60;
  return lumen::make_sva_corpus(g);
}

TEST(SvaGrammar, TestPairsDifferOnlyInTheControllersNumber) {
  auto c = small_corpus(3);
  std::map<std::string, int> per;
  for (const auto& p : c.test) {
    per[p.construction]++;
    auto a = words_of(p.clean_prefix), b = words_of(p.patch_prefix);
    ASSERT_EQ(a.size(), b.size()) << p.clean_prefix;
    ASSERT_GE(p.controller_word, 0);
    ASSERT_LT(p.controller_word, static_cast<int64_t>(a.size()));
    for (size_t i = 0; i < a.size(); ++i)
      if (static_cast<int64_t>(i) != p.controller_word) EXPECT_EQ(a[i], b[i]) << p.clean_prefix << " / " << p.patch_prefix;
    const std::string& cn = a[p.controller_word];
    ASSERT_TRUE(lumen::sva_is_noun(cn)) << cn;
    EXPECT_NE(lumen::sva_number(cn), lumen::sva_number(b[p.controller_word])) << p.clean_prefix;
    // The verbs agree with their prefix's controller.
    EXPECT_EQ(lumen::sva_number(p.clean_answer.substr(1)), lumen::sva_number(cn)) << p.clean_prefix << p.clean_answer;
    EXPECT_EQ(lumen::sva_number(p.patch_answer.substr(1)), lumen::sva_number(b[p.controller_word]));
    EXPECT_EQ(p.clean_answer[0], ' ');
    if (p.construction == "simple") {
      EXPECT_EQ(p.distractor_word, -1);
    } else {
      // The clean distractor is a noun of the other number.
      ASSERT_GE(p.distractor_word, 0);
      ASSERT_TRUE(lumen::sva_is_noun(a[p.distractor_word])) << p.clean_prefix;
      EXPECT_NE(lumen::sva_number(a[p.distractor_word]), lumen::sva_number(cn)) << p.clean_prefix;
      EXPECT_EQ(p.kind, std::string(lumen::sva_number(cn) ? "plural" : "singular") + "_" +
                                 (lumen::sva_number(a[p.distractor_word]) ? "plural" : "singular"));
    }
  }
  for (const auto& con : lumen::sva_constructions()) EXPECT_GT(per[con], 0) << con;
  EXPECT_EQ(per["across_pp"], 60);
}

TEST(SvaGrammar, TrainingSentencesAgreeAndNeverContainATestPrefix) {
  auto c = small_corpus(4);
  std::set<std::string> held;
  for (const auto& p : c.test) {
    held.insert(p.clean_prefix);
    held.insert(p.patch_prefix);
  }
  int64_t with_distractor = 0, same = 0;
  for (const auto& s : c.train) {
    auto w = words_of(s.text);
    ASSERT_EQ(w.back(), ".");
    for (const auto& pr : s.prefixes) EXPECT_EQ(held.count(pr.first), 0u) << pr.first;
    // Nouns in order; the main verb (last numbered non-noun) agrees with the first noun, and in
    // an object relative clause the clause verb agrees with the noun right before it.
    std::vector<size_t> nouns, verbs;
    for (size_t i = 0; i < w.size(); ++i) {
      if (lumen::sva_is_noun(w[i])) nouns.push_back(i);
      else if (lumen::sva_number(w[i]) >= 0) verbs.push_back(i);
    }
    ASSERT_FALSE(nouns.empty());
    ASSERT_FALSE(verbs.empty());
    EXPECT_EQ(lumen::sva_number(w[verbs.back()]), lumen::sva_number(w[nouns[0]])) << s.text;
    for (size_t v : verbs)
      if (v > 0 && lumen::sva_is_noun(w[v - 1]) && v != verbs.back())
        EXPECT_EQ(lumen::sva_number(w[v]), lumen::sva_number(w[v - 1])) << s.text;
    if (nouns.size() > 1) {
      ++with_distractor;
      same += lumen::sva_number(w[nouns[0]]) == lumen::sva_number(w[nouns[1]]);
    }
  }
  // Distractor number independent of the subject's in training text (rate 0.5).
  ASSERT_GT(with_distractor, 1000);
  const double rate = static_cast<double>(same) / with_distractor;
  EXPECT_GT(rate, 0.4);
  EXPECT_LT(rate, 0.6);
}

TEST(SvaGrammar, SeededAndDistinctAcrossSeeds) {
  auto a = small_corpus(5), b = small_corpus(5), d = small_corpus(6);
  ASSERT_EQ(a.train.size(), b.train.size());
  for (size_t i = 0; i < a.train.size(); ++i) ASSERT_EQ(a.train[i].text, b.train[i].text);
  int differ = 0;
  for (size_t i = 0; i < 100; ++i) differ += a.train[i].text != d.train[i].text;
  EXPECT_GT(differ, 50);
}

TEST(SvaTokenizer, EveryWordIsOneTokenAndTextRoundTrips) {
  auto c = small_corpus(7);
  const std::string dir = lumen_test::temp_dir("svatok");
  lumen::write_word_tokenizer(c.words, dir + "/tokenizer.json");
  auto tok = lumen::load_tokenizer(dir);
  EXPECT_TRUE(tok->adds_bos_by_default());
  EXPECT_EQ(tok->bos_id(), 1);
  std::set<int32_t> seen;
  for (const auto& w : c.words) {
    auto ids = tok->encode(" " + w, false);
    ASSERT_EQ(ids.size(), 1u) << w;
    EXPECT_TRUE(seen.insert(ids[0]).second) << w;
    EXPECT_EQ(tok->decode(ids), w);
  }
  for (size_t i = 0; i < 200; ++i) {
    const std::string& t = c.train[i].text;
    auto ids = tok->encode(t, true);
    EXPECT_EQ(ids[0], 1);
    EXPECT_EQ(ids.size(), words_of(t).size() + 1) << t;
    EXPECT_EQ(tok->decode(ids), t);
  }
  // Words outside the lexicon fall back to characters and still round-trip.
  auto ids = tok->encode("The zebra runs", true);
  EXPECT_GT(ids.size(), 4u);
  EXPECT_EQ(tok->decode(ids), "The zebra runs");
}

using lumen_test::CliRun;
using lumen_test::run_cli;

// A reduced organism (2 layers, d_model 32, a few hundred steps), trained in two runs: the first
// stops half way, the second resumes. Its checkpoint is an ordinary model folder, and the circuit
// found in it is faithful with a few latents that read the subject's number.
TEST(SvaOrganism, ReducedRunResumesLoadsAgreesAndItsCircuitReadsTheSubject) {
  const std::string dir = lumen_test::temp_dir("svaorg");
  lumen::OrganismOptions o;
  o.out_dir = dir;
  o.seed = 1;
  o.grammar.train_sentences = 4000;
  o.grammar.test_pairs = 40;
  o.n_layers = 2;
  o.d_model = 32;
  o.n_heads = 2;
  o.d_mlp = 64;
  o.steps = 500;
  o.batch = 16;
  o.seq_len = 48;
  o.lr = 1e-2;
  o.log_every = 100;
  o.checkpoint_every = 100;
  std::vector<std::string> lines;
  o.log = [&](const std::string& s) { lines.push_back(s); };
  o.stop_after_steps = 250;
  auto first = lumen::train_sva_organism(o);
  EXPECT_FALSE(first.finished);
  EXPECT_EQ(first.steps, 250);
  EXPECT_FALSE(lumen::file_exists(dir + "/config.json"));
  o.stop_after_steps = -1;
  auto r = lumen::train_sva_organism(o);
  ASSERT_TRUE(r.finished);
  bool resumed = false;
  for (auto& l : lines) resumed = resumed || l.find("resumed from") != std::string::npos;
  EXPECT_TRUE(resumed);
  EXPECT_EQ(r.steps, 500);
  // Chance is 50%; the clean prompts put a distractor of the other number next to the verb, so
  // following the nearest noun scores 0% there.
  EXPECT_GT(r.accuracy["all"], 0.8) << "final loss " << r.final_loss;
  EXPECT_GT(r.accuracy["across_pp"], 0.8);

  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "corpus.txt", "sva_test.jsonl", "organism.json"})
    EXPECT_TRUE(lumen::file_exists(dir + "/" + f)) << f;
  auto pairs = lumen::load_sva_jsonl(dir + "/sva_test.jsonl");
  EXPECT_EQ(pairs.size(), lumen::make_sva_corpus([&] {
                            auto g = o.grammar;
                            g.seed = o.seed;
                            return g;
                          }()).test.size());
  auto meta = nlohmann::json::parse(lumen::read_file(dir + "/organism.json"));
  EXPECT_NEAR(meta["accuracy"]["across_pp"]["accuracy"].get<double>(), r.accuracy["across_pp"], 1e-12);

  // The checkpoint through the library and the CLI.
  auto m = lumen::Model::load(dir);
  EXPECT_EQ(m.config().n_layers, 2);
  EXPECT_EQ(m.config().d_model, 32);
  EXPECT_NEAR(lumen::sva_accuracy_by_construction(m, pairs)["all"], r.accuracy["all"], 1e-12);
  auto info = run_cli("info " + dir);
  EXPECT_EQ(info.code, 0) << info.err;
  EXPECT_NE(info.out.find("hook_resid_post"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("tokenizer     hf-bpe"), std::string::npos) << info.out;
  auto ids = run_cli("tokenize " + dir + " --text 'The dog near the cats'");
  ASSERT_EQ(ids.code, 0) << ids.err;
  EXPECT_EQ(words_of(ids.out).size(), 6u) << ids.out;  // <s> + five words
  auto gen = run_cli("generate " + dir + " --prompt 'The dogs near the cat' --max-tokens 4");
  EXPECT_EQ(gen.code, 0) << gen.err;
  EXPECT_NE(gen.out.find("The dogs near the cat"), std::string::npos) << gen.out;

  // The known answer: an SAE on the last residual stream, trained on corpus.txt, and the circuit
  // for the constructions this short run has learnt (the subject controls the verb in each).
  lumen::TrainOptions so;
  so.sae.arch = lumen::SaeArch::TopK;
  so.sae.k = 4;
  so.sae.d_sae = 64;
  so.sae.hook_name = "blocks.1.hook_resid_post";
  so.data.corpus = dir + "/corpus.txt";
  so.data.ctx_len = 48;
  so.data.batch_tokens = 512;
  so.data.buffer_tokens = 8192;
  so.total_tokens = 60000;
  so.lr = 3e-3;
  so.log = [](const std::string&) {};
  auto sae = lumen::train_sae(m, so).sae;
  std::vector<lumen::SvaPair> learnt;
  for (const auto& p : pairs)
    if (p.construction == "simple" || p.construction == "across_pp" || p.construction == "across_orc") learnt.push_back(p);
  auto data = lumen::tokenize_sva(m, learnt);
  lumen::CircuitOptions co;
  co.method = lumen::AttributionMethod::IG;
  co.log = [](const std::string&) {};
  auto circuit = lumen::find_circuit(m, {sae}, data, co);
  EXPECT_GT(circuit.accuracy, 0.95);
  // Faithful with a handful of latents...
  double best_small = -1;
  for (const auto& pt : circuit.curve)
    if (pt.n_nodes <= 10) best_small = std::max(best_small, pt.faithfulness);
  EXPECT_GE(best_small, 0.9) << "no circuit of <= 10 nodes is 90% faithful";
  // ...whose strongest latents read the subject's number, not the distractor's.
  auto reads = lumen::number_readout(m, {sae}, data, circuit, 5);
  ASSERT_FALSE(reads.empty());
  for (const auto& r : reads) {
    EXPECT_GT(std::abs(r.r_subject), 0.6) << r.id;
    EXPECT_LT(std::abs(r.r_distractor), 0.3) << r.id;
  }
}

TEST(SvaOrganism, BadOptionsAreClearErrors) {
  lumen::OrganismOptions o;
  o.out_dir = lumen_test::temp_dir("svabad");
  o.d_model = 30;
  o.n_heads = 4;
  try {
    lumen::train_sva_organism(o);
    FAIL() << "expected an error";
  } catch (const lumen::Error& e) {
    EXPECT_NE(std::string(e.what()).find("d_model"), std::string::npos) << e.what();
  }
}

}  // namespace
