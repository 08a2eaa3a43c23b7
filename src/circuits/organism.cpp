// The agreement organism: a small llama-family model, randomly initialised and written as an HF
// folder, loaded through Model::load (so training runs the same forward every other command
// runs), trained by next-token prediction on the grammar's text with torch's AdamW, and written
// back with save_hf_checkpoint. State is checkpointed atomically; a rerun resumes.
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sys/stat.h>
#include <unordered_set>

#include "lumen/circuits_organism.h"
#include "lumen/error.h"
#include "lumen/files.h"
#include "lumen/model.h"
#include "lumen/tensors.h"

namespace lumen {
namespace {

using json = nlohmann::json;

uint64_t mix(uint64_t a, uint64_t b) {  // splitmix64 of (a, b): the per-step data seed
  uint64_t z = a * 0x9E3779B97F4A7C15ull + b + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

json settings_json(const OrganismOptions& o, int64_t vocab) {
  return {{"seed", o.seed},
          {"grammar", {{"train_sentences", o.grammar.train_sentences}, {"heldout_sentences", o.grammar.heldout_sentences},
                       {"test_pairs", o.grammar.test_pairs},
                       {"same_number_rate", o.grammar.same_number_rate}}},
          {"n_layers", o.n_layers}, {"d_model", o.d_model}, {"n_heads", o.n_heads}, {"d_mlp", o.d_mlp},
          {"vocab", vocab}, {"steps", o.steps}, {"batch", o.batch}, {"seq_len", o.seq_len}, {"lr", o.lr},
          {"weight_decay", o.weight_decay}, {"warmup_frac", o.warmup_frac}};
}

// config.json + N(0, 0.02) weights (norms at 1, output projections scaled by 1/sqrt(2L) as in
// GPT-2) for an HF llama folder with tied embeddings.
void write_initial_model(const OrganismOptions& o, int64_t V, const std::string& dir) {
  const int64_t D = o.d_model, L = o.n_layers, H = o.n_heads, F = o.d_mlp;
  json cfg = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_size", D},
              {"intermediate_size", F}, {"num_hidden_layers", L}, {"num_attention_heads", H},
              {"num_key_value_heads", H}, {"vocab_size", V}, {"max_position_embeddings", std::max<int64_t>(128, o.seq_len)},
              {"rms_norm_eps", 1e-5}, {"rope_theta", 10000.0}, {"hidden_act", "silu"},
              {"tie_word_embeddings", true}, {"torch_dtype", "float32"}, {"bos_token_id", 1}, {"eos_token_id", 2}};
  torch::manual_seed(o.seed);
  auto w = [](std::vector<int64_t> shape, double std) { return torch::randn(shape) * std; };
  const double out_std = 0.02 / std::sqrt(2.0 * L);
  std::vector<std::pair<std::string, at::Tensor>> t;
  t.emplace_back("model.embed_tokens.weight", w({V, D}, 0.02));
  for (int64_t l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.emplace_back(p + "input_layernorm.weight", torch::ones({D}));
    t.emplace_back(p + "self_attn.q_proj.weight", w({D, D}, 0.02));
    t.emplace_back(p + "self_attn.k_proj.weight", w({D, D}, 0.02));
    t.emplace_back(p + "self_attn.v_proj.weight", w({D, D}, 0.02));
    t.emplace_back(p + "self_attn.o_proj.weight", w({D, D}, out_std));
    t.emplace_back(p + "post_attention_layernorm.weight", torch::ones({D}));
    t.emplace_back(p + "mlp.gate_proj.weight", w({F, D}, 0.02));
    t.emplace_back(p + "mlp.up_proj.weight", w({F, D}, 0.02));
    t.emplace_back(p + "mlp.down_proj.weight", w({D, F}, out_std));
  }
  t.emplace_back("model.norm.weight", torch::ones({D}));
  save_safetensors(join_path(dir, "model.safetensors"), t, {{"format", "pt"}});
  write_file_atomic(join_path(dir, "config.json"), [&](std::ostream& out) { out << cfg.dump(2) << "\n"; });
}

double lr_at(const OrganismOptions& o, int64_t step) {
  const int64_t warm = std::max<int64_t>(1, static_cast<int64_t>(o.warmup_frac * o.steps));
  if (step < warm) return o.lr * (step + 1) / warm;
  const double p = static_cast<double>(step - warm) / std::max<int64_t>(1, o.steps - warm);
  return o.lr * (0.1 + 0.9 * 0.5 * (1.0 + std::cos(M_PI * p)));  // cosine to 10%
}

// [B,T] windows of the sentence stream "<s> s_i <s> s_i+1 ...", each starting at a sentence.
torch::Tensor batch_windows(const std::vector<std::vector<int32_t>>& sents, int32_t bos, int64_t B, int64_t T,
                            uint64_t seed) {
  std::mt19937_64 g(seed);
  auto tokens = torch::empty({B, T}, torch::kLong);
  auto acc = tokens.accessor<int64_t, 2>();
  for (int64_t b = 0; b < B; ++b) {
    size_t s = g() % sents.size();
    int64_t t = 0;
    while (t < T) {
      acc[b][t++] = bos;
      for (size_t i = 0; i < sents[s].size() && t < T; ++i) acc[b][t++] = sents[s][i];
      s = (s + 1) % sents.size();
    }
  }
  return tokens;
}

}  // namespace

std::map<std::string, double> sva_accuracy_by_construction(const Model& model, const std::vector<SvaPair>& pairs) {
  // The circuits' word-level scoring, per construction and over all pairs (weighted by pairs).
  std::map<std::string, std::vector<SvaPair>> groups;
  for (const auto& p : pairs) groups[p.construction].push_back(p);
  std::map<std::string, double> acc;
  double right = 0;
  int64_t n = 0;
  for (const auto& [construction, group] : groups) {
    const auto r = sva_accuracy(model, tokenize_sva(model, group));
    acc[construction] = r.accuracy;
    right += r.accuracy * r.examples;
    n += r.examples;
  }
  acc["all"] = n > 0 ? right / n : 0.0;
  return acc;
}

OrganismResult train_sva_organism(const OrganismOptions& opt_in) {
  OrganismOptions opt = opt_in;
  opt.grammar.seed = opt.seed;
  auto log = opt.log ? opt.log : [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); };
  require(!opt.out_dir.empty(), ErrorKind::Arg, "toy sva-transformer: --out DIR is required");
  require(opt.n_layers >= 1 && opt.d_model > 0 && opt.n_heads > 0 && opt.d_model % opt.n_heads == 0 &&
              (opt.d_model / opt.n_heads) % 2 == 0,
          ErrorKind::Arg, "toy sva-transformer: d_model must be a positive multiple of n_heads with an even head size");
  require(opt.steps > 0 && opt.batch > 0 && opt.seq_len >= 16, ErrorKind::Arg,
          "toy sva-transformer: steps and batch must be positive and seq_len at least 16");
  const std::string out = opt.out_dir, work = join_path(out, "train"), init = join_path(work, "init");
  for (const auto& d : {out, work, init}) {
    ::mkdir(d.c_str(), 0755);
    require(is_directory(d), ErrorKind::Io, d + ": cannot create the folder");
  }

  // 1. Grammar, text and tokenizer (deterministic in the seed, so a resumed run rebuilds them).
  SvaCorpus corpus = make_sva_corpus(opt.grammar);
  write_word_tokenizer(corpus.words, join_path(init, "tokenizer.json"));
  log("toy sva-transformer: " + std::to_string(corpus.train.size()) + " training sentences, " +
      std::to_string(corpus.test.size()) + " held-out pairs, lexicon " + std::to_string(corpus.words.size()) + " words");

  // 2. The initial model; written once, then loaded like any checkpoint.
  auto tok_probe = load_tokenizer(join_path(init, "tokenizer.json"));
  const int64_t V = tok_probe->vocab_size();
  const json settings = settings_json(opt, V);
  const std::string fp = settings.dump();
  const std::string state_path = join_path(work, "state.pt");
  const std::string init_stamp = join_path(init, "settings.json");
  if (!file_exists(init_stamp) || read_file(init_stamp) != fp + "\n") {
    write_initial_model(opt, V, init);
    write_file_atomic(init_stamp, [&](std::ostream& o) { o << fp << "\n"; });
    if (file_exists(state_path)) log("toy sva-transformer: " + state_path + " was written with other settings; starting over");
    std::remove(state_path.c_str());
  }
  Model model = Model::load(init, LoadOptions{});
  const Tokenizer& tok = model.require_tokenizer();
  std::vector<std::vector<int32_t>> sents;
  sents.reserve(corpus.train.size());
  for (const auto& s : corpus.train) sents.push_back(tok.encode(s.text, false));
  const int32_t bos = tok.bos_id();
  require(bos >= 0, ErrorKind::Tokenizer, init + "/tokenizer.json: the organism's tokenizer has no <s>");

  // 3. Parameters (tied embeddings appear twice by name: optimise each tensor once).
  model.set_requires_grad(true);
  std::vector<std::string> names;
  std::vector<torch::Tensor> params;
  for (auto& kv : model.named_parameters()) {
    bool dup = false;
    for (auto& p : params) dup = dup || p.is_same(kv.second);
    if (dup) continue;
    names.push_back(kv.first);
    params.push_back(kv.second);
  }
  // Decoupled weight decay on matrices only (norm gains stay free).
  std::vector<torch::Tensor> decay, no_decay;
  for (auto& p : params) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                 torch::optim::AdamWOptions(opt.lr).betas({0.9, 0.95}).weight_decay(opt.weight_decay)));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(
                                    torch::optim::AdamWOptions(opt.lr).betas({0.9, 0.95}).weight_decay(0.0)));
  torch::optim::AdamW adam(groups, torch::optim::AdamWOptions(opt.lr));

  int64_t start = 0;
  double trained_seconds = 0;
  if (file_exists(state_path)) {
    try {
      torch::serialize::InputArchive ar;
      ar.load_from(state_path);
      c10::IValue v;
      ar.read("fingerprint", v);
      require(v.toStringRef() == fp, ErrorKind::Arg, state_path + ": written with other settings");
      ar.read("step", v);
      start = v.toInt();
      ar.read("seconds", v);
      trained_seconds = v.toDouble();
      torch::NoGradGuard ng;
      for (size_t i = 0; i < params.size(); ++i) {
        torch::Tensor t;
        ar.read("p." + names[i], t);
        params[i].copy_(t);
      }
      torch::serialize::InputArchive oa;
      ar.read("adam", oa);
      adam.load(oa);
    } catch (const c10::Error& e) {
      throw Error(ErrorKind::Io, state_path + ": unreadable training state (" + e.what_without_backtrace() +
                                     "); delete it to start over");
    }
    log("toy sva-transformer: resumed from " + state_path + " at step " + std::to_string(start));
  }
  auto save_state = [&](int64_t step) {
    torch::serialize::OutputArchive ar;
    ar.write("fingerprint", c10::IValue(fp));
    ar.write("step", c10::IValue(step));
    ar.write("seconds", c10::IValue(trained_seconds));
    for (size_t i = 0; i < params.size(); ++i) ar.write("p." + names[i], params[i].detach());
    torch::serialize::OutputArchive oa;
    adam.save(oa);
    ar.write("adam", oa);
    // Temp file + rename: an interrupted write leaves the previous state.
    const std::string tmp = state_path + ".tmp";
    ar.save_to(tmp);
    require(std::rename(tmp.c_str(), state_path.c_str()) == 0, ErrorKind::Io, state_path + ": cannot write the training state");
  };

  log("toy sva-transformer: model " + std::to_string(opt.n_layers) + " layers, d_model " + std::to_string(opt.d_model) +
      ", " + std::to_string(opt.n_heads) + " heads, d_mlp " + std::to_string(opt.d_mlp) + ", vocab " + std::to_string(V) +
      ", " + std::to_string(model.num_parameters() - (model.config().tied_embeddings ? V * opt.d_model : 0)) + " parameters");

  // 4. Next-token training.
  OrganismResult res;
  auto t0 = std::chrono::steady_clock::now(), t_log = t0;
  int64_t step_log = start;
  double loss_sum = 0;
  int64_t loss_n = 0, step = start;
  for (; step < opt.steps; ++step) {
    for (auto& g : adam.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr_at(opt, step));
    auto tokens = batch_windows(sents, bos, opt.batch, opt.seq_len, mix(opt.seed, step)).to(model.device());
    auto logits = model.forward(tokens);  // [B,T,V]
    const int64_t T = opt.seq_len;
    auto loss = torch::nn::functional::cross_entropy(logits.narrow(1, 0, T - 1).reshape({-1, V}),
                                                     tokens.narrow(1, 1, T - 1).reshape({-1}));
    adam.zero_grad();
    loss.backward();
    torch::nn::utils::clip_grad_norm_(params, 1.0);
    adam.step();
    loss_sum += loss.item<double>();
    ++loss_n;
    const bool last = step + 1 == opt.steps;
    const bool stop_here = opt.stop_after_steps >= 0 && step + 1 >= opt.stop_after_steps && !last;
    if ((opt.log_every > 0 && (step + 1) % opt.log_every == 0) || last || stop_here) {
      const auto now = std::chrono::steady_clock::now();
      const double rate = (step + 1 - step_log) / std::max(std::chrono::duration<double>(now - t_log).count(), 1e-9);
      t_log = now;
      step_log = step + 1;
      res.final_loss = loss_sum / loss_n;
      auto acc = sva_accuracy_by_construction(model, corpus.test);
      char buf[256];
      std::snprintf(buf, sizeof buf, "toy sva-transformer: step %lld/%lld loss %.4f agreement %.3f (%.1f steps/s)",
                    static_cast<long long>(step + 1), static_cast<long long>(opt.steps), res.final_loss, acc["all"],
                    rate);
      log(buf);
      loss_sum = 0;
      loss_n = 0;
    }
    if ((opt.checkpoint_every > 0 && (step + 1) % opt.checkpoint_every == 0) || last || stop_here) {
      trained_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      t0 = std::chrono::steady_clock::now();
      save_state(step + 1);
    }
    if (stop_here) {
      res.finished = false;
      ++step;
      break;
    }
  }
  res.steps = step;
  res.train_seconds = trained_seconds;
  model.set_requires_grad(false);
  if (!res.finished) return res;

  // 5. The checkpoint and its companions; accuracy is measured on the reloaded checkpoint.
  save_hf_checkpoint(model, out);
  write_file_atomic(join_path(out, "corpus.txt"), [&](std::ostream& o) {
    for (const auto& s : corpus.train) o << s.text << "\n";
  });
  write_file_atomic(join_path(out, "heldout.txt"), [&](std::ostream& o) {
    for (const auto& s : corpus.heldout) o << s.text << "\n";
  });
  write_sva_pairs(corpus.test, join_path(out, "sva_test.jsonl"));
  Model reloaded = Model::load(out, LoadOptions{});
  res.accuracy = sva_accuracy_by_construction(reloaded, corpus.test);
  res.n_parameters = reloaded.num_parameters() - (reloaded.config().tied_embeddings ? V * opt.d_model : 0);
  res.min_accuracy = 1.0;
  json per = json::object();
  std::map<std::string, int64_t> pairs_by;
  for (auto& p : corpus.test) pairs_by[p.construction]++;
  for (const auto& c : sva_constructions()) {
    res.min_accuracy = std::min(res.min_accuracy, res.accuracy[c]);
    per[c] = {{"accuracy", res.accuracy[c]}, {"pairs", pairs_by[c]}};
  }
  json meta = {{"kind", "lumen sva organism"},
               {"settings", settings},
               {"constructions", sva_constructions()},
               {"lexicon", corpus.words},
               {"train_sentences", corpus.train.size()},
               {"test_pairs", corpus.test.size()},
               {"accuracy", per},
               {"accuracy_all", res.accuracy["all"]},
               {"min_accuracy", res.min_accuracy},
               {"final_train_loss", res.final_loss},
               {"train_seconds", res.train_seconds},
               {"parameters", res.n_parameters},
               {"scoring", "a prompt (clean or patch prefix) is right when its own answer's logit beats the other form's"},
               {"files", {{"corpus", "corpus.txt"}, {"heldout", "heldout.txt"}, {"test", "sva_test.jsonl"}}}};
  write_file_atomic(join_path(out, "organism.json"), [&](std::ostream& o) { o << meta.dump(2) << "\n"; });
  std::string line = "toy sva-transformer: held-out agreement";
  for (const auto& c : sva_constructions()) {
    char buf[64];
    std::snprintf(buf, sizeof buf, " %s %.1f%%", c.c_str(), 100.0 * res.accuracy[c]);
    line += buf;
  }
  log(line);
  log("toy sva-transformer: wrote " + out + " (config.json, model.safetensors, tokenizer.json, corpus.txt, heldout.txt, sva_test.jsonl, organism.json)");
  return res;
}

}  // namespace lumen
