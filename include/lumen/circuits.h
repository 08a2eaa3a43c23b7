// Sparse feature circuits (Marks et al. 2024, "Sparse Feature Circuits"): subject-verb agreement
// data and word-level scoring, node effects of SAE latents and error terms by attribution patching
// or integrated gradients, edges, faithfulness/completeness, and the graph's JSON/DOT/HTML/SVG.
// Shapes: N examples, T prefix positions, S d_sae, D d_model, P node positions (1 when summed).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "lumen/model.h"
#include "lumen/sae.h"

namespace lumen {

// ---- data and scoring (src/circuits/sva.cpp) -----------------------------------------------------
// One agreement pair in the schema of ../shared/data/sva: the prefixes differ in the subject's
// number, the answers are the verb forms that agree with each.
struct SvaPair {
  std::string clean_prefix, patch_prefix, clean_answer, patch_answer, kind;  // kind: the "case" field
  // Optional (the model organism's sva_test.jsonl has them): the grammar construction and the word
  // indices (0-based, in the prefix) of the noun the verb agrees with and of the distractor (-1: none).
  std::string construction;
  int64_t controller_word = -1, distractor_word = -1;
};

// Reads JSONL (clean_prefix, patch_prefix, clean_answer, patch_answer[, case]); limit < 0: all.
// Throws Error(Io/Format) naming the file and line.
std::vector<SvaPair> load_sva_jsonl(const std::string& path, int64_t limit = -1);

// Agreement pairs in TinyStories words ("The dog" / "The dogs" ... " is"/" are", " was"/" were",
// " has"/" have"). construction: "simple" ("The dog"), "pp" ("The dog near the trees", the
// distractor of the other number) or "all" (both). Clean subjects alternate singular/plural.
// With a model, each subject takes the first determiner pair ("The"/"The", "A"/"The",
// "This"/"These", "That"/"These") whose two prefixes tokenize to the same length (a plural "s" is
// its own token in small vocabularies), and subjects with none are skipped.
std::vector<SvaPair> sva_template_pairs(int64_t n, uint64_t seed, const std::string& construction = "simple",
                                        const Model* model = nullptr);

// Tokenized pairs whose clean and patch prefixes have the same length (BOS included when the
// tokenizer's family adds it). Answers may span several tokens.
struct SvaExample {
  std::vector<int32_t> clean, patch;            // prefixes, same length
  std::vector<int32_t> clean_answer, patch_answer;
  std::string kind;
};
struct SvaData {
  std::vector<SvaExample> examples;
  int64_t dropped = 0;  // pairs whose prefixes tokenize to different lengths (or empty answers)
};
SvaData tokenize_sva(const Model& model, const std::vector<SvaPair>& pairs);

// Vocabulary mask [V] (bool) of tokens that start a new word: a leading space/"▁"/"Ġ", a newline,
// punctuation, or EOS. A word's score is sum_j log p(a_j | ...) + log P(next token in this set).
at::Tensor new_word_mask(const Model& model);

// Word-level scores of both answers after both prefixes, without hooks: m = score(patch answer) -
// score(clean answer). Accuracy counts the clean prefix preferring the clean answer and the patch
// prefix preferring the patch answer (each pair contributes two judgements).
struct SvaAccuracy {
  double accuracy = 0;
  double mean_metric_clean = 0, mean_metric_patch = 0;  // m on clean and on patch prefixes
  int64_t examples = 0;
};
SvaAccuracy sva_accuracy(const Model& model, const SvaData& data, int64_t batch = 64);

// ---- circuits (src/circuits/attribution.cpp) -----------------------------------------------------
enum class AttributionMethod { AtP, IG };

struct CircuitOptions {
  AttributionMethod method = AttributionMethod::IG;
  int64_t ig_steps = 10;
  bool keep_positions = false;   // nodes per (site, position, latent) instead of summed over positions
  double node_threshold = 0.1;   // |mean effect per example| to enter the circuit
  double edge_threshold = 0.01;  // |mean edge weight per example| to be drawn
  int64_t batch = 16;            // pairs per forward pass (2 rows each; IG: x ig_steps)
  int64_t max_edge_nodes = 64;   // downstream circuit nodes whose incoming edges are computed
  int64_t exact_nodes = 32;      // nodes patched exactly, on the first batch, to check the estimates (0: skip)
  // Node thresholds of the faithfulness curve; empty: chosen so the circuit has 1, 2, 5, 10, ... nodes.
  std::vector<double> sweep;
  uint64_t seed = 0;             // which non-top nodes the exact check samples
  std::function<void(const std::string&)> log;  // progress; default stderr
};

struct CircuitNode {
  std::string id;            // "L{layer}.{site}.f{feature}@{position}", errors "…e@…", output "metric"
  std::string kind;          // "feature", "error", "output", and in the toy "input", "hidden"
  int64_t layer = -1;        // the site's layer (-1: input, n_layers: output)
  std::string site;          // hook name, e.g. blocks.2.hook_resid_post
  int64_t position = -1;     // prefix position; -1 when summed over positions
  int64_t feature = -1;      // latent index; -1 for error and output nodes
  double activation = 0;     // mean clean activation (errors: mean |error|)
  double effect = 0;         // mean effect per example on m
  std::string label;
};
struct CircuitLink {
  int64_t source = 0, target = 0;  // indices into nodes
  double weight = 0;               // mean per example; sign kept
};
struct FaithfulnessPoint {
  double node_threshold = 0;
  int64_t n_nodes = 0;
  double faithfulness = 0, completeness = 0;
};

struct CircuitResult {
  std::vector<CircuitNode> nodes;  // the circuit (|effect| >= threshold), then the output node
  std::vector<CircuitLink> links;
  std::vector<FaithfulnessPoint> curve;
  double threshold = 0;            // the node threshold used
  double faithfulness = 0, completeness = 0;  // of the circuit at that threshold
  double m_clean = 0, m_patch = 0, m_empty = 0;  // m(M) on clean prompts, on patch prompts, m(∅)
  double accuracy = 0;
  double exact_correlation = 0;    // Pearson r, linear estimate vs exact patching
  int64_t exact_checked = 0;
  int64_t total_nodes = 0;         // candidate nodes (latents + errors, at every site/position)
  int64_t examples = 0;
  std::string method;
  double seconds = 0;
  // Effects of every candidate node (for analysis): ids and mean effects, strongest first, top 200.
  std::vector<CircuitNode> top_nodes;
};

// Attaches every SAE (WithError) and scores agreement: nodes are all latents and one error node
// per site (and position), their effects are AtP or IG estimates of patching them from the clean to
// the patch prompt, edges follow Marks et al. eq. 4 between consecutive sites, and the circuit is
// judged by mean-ablating what lies outside it.
CircuitResult find_circuit(const Model& model, const std::vector<Sae>& saes, const SvaData& data,
                           const CircuitOptions& opt = {});

// Activations of latents [N, S] summed over each clean prompt's prefix positions and its patch
// prompt's, for checking what a feature reads (e.g. subject vs distractor number).
struct LatentReadout {
  at::Tensor clean, patch;      // [N, S] float32, CPU
  std::vector<int64_t> example;  // row -> index into data.examples (rows are grouped by length)
};
LatentReadout latent_readout(const Model& model, const Sae& sae, const SvaData& data, int64_t batch = 64);

// What the circuit's strongest latents read (summed over the prefix), over clean and patch
// prompts: Pearson r of the activation with the subject's number and with the distractor's (±1),
// both taken from the pair's "case" ("singular", "plural_singular": subject_distractor, as in
// ../shared/data/sva; the patch prompt flips the subject). Pairs whose case does not parse are skipped.
struct NumberReadout {
  std::string id;
  double effect = 0, r_subject = 0, r_distractor = 0;
  int64_t prompts = 0;
};
std::vector<NumberReadout> number_readout(const Model& model, const std::vector<Sae>& saes, const SvaData& data,
                                          const CircuitResult& circuit, int64_t top = 10);

// ---- export (src/circuits/export.cpp) ------------------------------------------------------------
// Node labels from a feature store (top tokens at each latent's strongest contexts); sources are
// matched by hook ("<hook>.sae"). Errors and nodes the store lacks keep their label.
void label_circuit(CircuitResult& c, const std::string& store_path);
// graph.json, faithfulness.json, circuit.dot, circuit.html, faithfulness.svg in out_dir.
void write_circuit(const CircuitResult& c, const std::string& out_dir, const std::string& title);

// ---- the toy (src/circuits/toy.cpp) --------------------------------------------------------------
// A 2-input (subject number, distractor number: ±1), 4-hidden (ReLU), 2-output (singular / plural
// verb) network trained to agree with the subject, an SAE on its hidden layer, and the graph from
// inputs through hidden units and features to the outputs, scored like the model's circuits.
struct ToyOptions {
  uint64_t seed = 0;
  int64_t d_sae = 8;
  int64_t steps = 600;
  double l1 = 3e-3;
  double edge_threshold = 0.05;
};
struct ToyResult {
  CircuitResult graph;
  double accuracy = 0;       // the network's agreement accuracy
  double sae_fvu = 0;        // the SAE's fraction of variance unexplained on the hidden layer
  int64_t top_feature = -1;  // latent with the largest |effect|
  double top_subject_corr = 0, top_distractor_corr = 0;  // its activation vs each input, Pearson r
};
ToyResult run_toy_sva(const ToyOptions& opt = {});

double pearson(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace lumen
