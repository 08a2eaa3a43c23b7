// A model organism with a known answer (issue #6): a synthetic subject-verb agreement grammar, a
// word-level tokenizer for it, and a small llama-family transformer trained on it from scratch.
// Because the grammar fixes the mechanism (the subject's number must reach the verb past a
// distractor noun), circuits found in the trained model can be checked against it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "lumen/circuits.h"  // SvaPair, load_sva_jsonl

namespace lumen {

class Model;

// ---- grammar ------------------------------------------------------------------------------------

// The constructions, in report order. The agreeing noun is the "controller"; the distractor is a
// noun between it and the verb (none for simple).
//   simple      The dog | runs
//   across_pp   The dog near the cats | runs
//   across_src  The dog that chases the cats | runs        (subject relative clause)
//   across_orc  The dog that the cats chase | runs         (object relative clause)
//   within_orc  The dog that the cats | chase              (controller = the clause's subject)
const std::vector<std::string>& sva_constructions();

struct SvaSentence {
  std::string text;  // "The dog near the cats runs ."
  // Every agreement point: the words before the verb, and which construction it exercises.
  std::vector<std::pair<std::string, std::string>> prefixes;  // (prefix, construction)
};

struct SvaGrammarOptions {
  uint64_t seed = 0;
  int64_t train_sentences = 40000;
  int64_t heldout_sentences = 2000;  // more text of the same kind, never trained on (SAE evaluation)
  int64_t test_pairs = 200;  // per construction (simple: at most a quarter of its adjective-noun prefixes)
  // Chance that a distractor has the controller's number in TRAINING text. Not 0: a model that only
  // saw mismatched distractors could predict the verb from the distractor instead of the subject.
  double same_number_rate = 0.5;
};

struct SvaCorpus {
  std::vector<SvaSentence> train;  // no agreement prefix of a training sentence is a test prefix
  std::vector<SvaSentence> heldout;
  std::vector<SvaPair> test;       // clean distractor always of the other number (the hard case)
  std::vector<std::string> words;  // the lexicon, every word the grammar can emit (sorted)
};

SvaCorpus make_sva_corpus(const SvaGrammarOptions& opt);

// The grammatical number of a lexicon noun or verb: 0 singular, 1 plural, -1 neither (or unknown).
int sva_number(const std::string& word);
bool sva_is_noun(const std::string& word);

// Writes a Hugging Face tokenizer.json (BPE, Metaspace pre-tokenizer, TemplateProcessing with <s>)
// whose merges build every lexicon word into one token; other text falls back to characters.
// Ids: 0 <unk>, 1 <s>, 2 </s>.
void write_word_tokenizer(const std::vector<std::string>& words, const std::string& path);

// JSONL, one pair per line: clean_prefix, patch_prefix, clean_answer, patch_answer, case, plus
// construction, controller_word, distractor_word.
void write_sva_pairs(const std::vector<SvaPair>& pairs, const std::string& path);

// ---- model --------------------------------------------------------------------------------------

struct OrganismOptions {
  std::string out_dir;
  uint64_t seed = 0;
  SvaGrammarOptions grammar;  // grammar.seed is set from seed
  int64_t n_layers = 3, d_model = 64, n_heads = 4, d_mlp = 256;
  int64_t steps = 1200, batch = 32, seq_len = 64;
  double lr = 3e-3, weight_decay = 0.01, warmup_frac = 0.05;
  int64_t log_every = 100, checkpoint_every = 250;
  int64_t stop_after_steps = -1;  // tests: stop (checkpointed) after this many steps
  std::function<void(const std::string&)> log;  // default: stderr
};

struct OrganismResult {
  bool finished = true;
  int64_t steps = 0;
  double train_seconds = 0, final_loss = 0;
  int64_t n_parameters = 0;
  std::map<std::string, double> accuracy;  // per construction, over clean and patch prompts
  double min_accuracy = 0;
};

// Agreement accuracy on pairs with the circuits' word-level scoring (sva_accuracy in circuits.h),
// per construction and over all pairs ("all").
std::map<std::string, double> sva_accuracy_by_construction(const Model& model, const std::vector<SvaPair>& pairs);

// Generates the corpus, builds and trains the model and writes out_dir: config.json,
// model.safetensors, tokenizer.json (an ordinary HF llama checkpoint), corpus.txt, heldout.txt,
// sva_test.jsonl,
// organism.json (settings, accuracy per construction, timing). Training state lives in
// out_dir/train/ and a rerun with the same settings resumes from it.
OrganismResult train_sva_organism(const OrganismOptions& opt);

}  // namespace lumen
