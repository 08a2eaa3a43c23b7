// bench_viz: lumen's half of the feature-visualization benchmark (bench/run_viz.sh runs it next to
// bench/baseline_viz.py). One GCG step = the token gradient of one sequence + `candidates` one-token
// swaps from its top-k + scoring every candidate; we time it and report candidates per second.
//
//   bench_viz export --model BIN --out DIR                  HF llama folder for the Python side
//   bench_viz run --model BIN --sae DIR --latent N --out FILE.json [--len 12] [--candidates 512]
//                 [--topk 256] [--reps 10] [--threads N]
//
// Variants: "reuse" (the step as lumen's GCG runs it: the evaluator stops at the SAE's layer and
// every candidate shares the current sequence's positions before its swap), "stop" (stop_at_layer,
// every candidate run in full), "full" (all layers and logits, what an eager loop does), and the
// beam-search extension with shared-prefix reuse against scoring the same full sequences.
#include <chrono>
#include <ctime>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <string>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "lumen/error.h"
#include "lumen/model.h"
#include "lumen/runtime.h"
#include "lumen/sae.h"
#include "lumen/viz.h"
#include "viz/objective.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Args {
  std::map<std::string, std::string> kv;
  std::string get(const std::string& k, const std::string& d = "") const {
    auto it = kv.find(k);
    return it == kv.end() ? d : it->second;
  }
  int64_t num(const std::string& k, int64_t d) const { return kv.count(k) ? std::stoll(kv.at(k)) : d; }
};

// CPU time of the whole process (every thread): on a machine shared with other jobs it moves much
// less than wall time, so the report shows a CPU-time ratio next to the wall-time one.
double cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// One GCG step on `cur`: gradient, candidates from the top-k of each position, scores.
std::vector<lumen::viz::Seq> gcg_candidates(lumen::viz::Objective& obj, const lumen::viz::Seq& cur, int64_t C, int64_t topk,
                                            std::mt19937_64& rng) {
  auto g = obj.gradients({cur})[0];  // [T,V]
  auto top = std::get<1>(g.topk(topk, 1));
  auto ta = top.accessor<int64_t, 2>();
  const int64_t T = static_cast<int64_t>(cur.size());
  std::vector<lumen::viz::Seq> c(C, cur);
  for (auto& s : c) {
    const int64_t p = std::uniform_int_distribution<int64_t>(0, T - 1)(rng);
    s[p] = static_cast<int32_t>(ta[p][std::uniform_int_distribution<int64_t>(0, topk - 1)(rng)]);
  }
  return c;
}

int run(const Args& a) {
  if (const int64_t threads = a.num("threads", 0); threads > 0) at::set_num_threads(static_cast<int>(threads));
  auto model = lumen::Model::load(a.get("model"));
  auto sae = lumen::load_sae(a.get("sae"));
  const int64_t len = a.num("len", 12), C = a.num("candidates", 512), topk = a.num("topk", 256), reps = a.num("reps", 10);
  lumen::VizTarget tg;
  tg.hook = sae.config().hook_name;
  tg.sae = &sae;
  tg.index = a.num("latent", 0);
  lumen::VizOptions o;
  o.len = len;
  o.batch = C;
  o.budget_tokens = int64_t(1) << 50;
  nlohmann::json out;
  out["impl"] = "lumen";
  out["threads"] = at::get_num_threads();
  out["len"] = len;
  out["candidates"] = C;
  out["hook"] = tg.hook;
  for (const std::string variant : {"reuse", "stop", "full"}) {
    const bool full = variant == "full", reuse = variant == "reuse";
    lumen::viz::Objective obj(model, tg, o, full);
    auto score = [&](const std::vector<lumen::viz::Seq>& cands, const lumen::viz::Seq& cur) {
      return reuse ? obj.evaluate_edits(cands, {cur}) : obj.evaluate(cands);
    };
    std::mt19937_64 rng(5);
    lumen::viz::Seq cur = obj.random_seq(len, rng);
    std::vector<double> times, cpu;
    int64_t tokens = 0;
    for (int64_t r = 0; r < reps + 2; ++r) {
      const auto t0 = Clock::now();
      const double c0 = cpu_seconds();
      auto cands = gcg_candidates(obj, cur, C, topk, rng);
      const int64_t u0 = obj.used();
      auto sc = score(cands, cur);
      tokens = obj.used() - u0;
      size_t best = 0;
      for (size_t i = 1; i < sc.size(); ++i)
        if (sc[i].search > sc[best].search) best = i;
      cur = cands[best];
      const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
      if (r >= 2) {  // two warm-up steps
        times.push_back(dt);
        cpu.push_back(cpu_seconds() - c0);
      }
    }
    // The parts of the step: the gradient alone, and scoring the candidates alone.
    // The parts of the step: the gradient alone, scoring the candidates alone, and the round-trip
    // validity filter that lumen's GCG applies before scoring (not part of the timed step: the
    // eager step does not filter either).
    std::vector<double> tg, tev, tval;
    int64_t valid = 0;
    for (int64_t r = 0; r < 3; ++r) {
      auto t0 = Clock::now();
      auto cands = gcg_candidates(obj, cur, C, topk, rng);
      auto t1 = Clock::now();
      score(cands, cur);
      auto t2 = Clock::now();
      for (const auto& c : cands) valid += obj.valid(c);
      auto t3 = Clock::now();
      tg.push_back(std::chrono::duration<double>(t1 - t0).count());
      tev.push_back(std::chrono::duration<double>(t2 - t1).count());
      tval.push_back(std::chrono::duration<double>(t3 - t2).count());
    }
    out["gcg_parts_" + variant] = {{"gradient_and_sampling_s", median(tg)}, {"evaluate_s", median(tev)},
                                   {"validity_s", median(tval)}, {"valid_fraction", valid / (3.0 * C)}};
    const double m = median(times);
    out["gcg_step_" + variant] = {{"median_s", m}, {"candidates_per_s", C / m}, {"times", times},
                                   {"cpu_median_s", median(cpu)}, {"tokens", tokens}};
  }
  {
    // Beam step at the last position: 8 beams x all tokens, with and without prefix reuse.
    lumen::viz::Objective obj(model, tg, o, false);
    std::mt19937_64 rng(6);
    std::vector<lumen::viz::Seq> beams;
    for (int i = 0; i < 8; ++i) beams.push_back(obj.random_seq(len - 1, rng));
    std::vector<std::pair<int64_t, int32_t>> ext;
    std::vector<lumen::viz::Seq> full;
    for (int64_t w = 0; w < 8; ++w)
      for (int32_t t : obj.allowed()) {
        ext.push_back({w, t});
        full.push_back(beams[w]);
        full.back().push_back(t);
      }
    std::vector<double> te, tf;
    for (int64_t r = 0; r < std::max<int64_t>(3, reps / 2) + 1; ++r) {
      auto t0 = Clock::now();
      obj.extend(beams, ext);
      auto t1 = Clock::now();
      obj.evaluate(full);
      auto t2 = Clock::now();
      if (r) {
        te.push_back(std::chrono::duration<double>(t1 - t0).count());
        tf.push_back(std::chrono::duration<double>(t2 - t1).count());
      }
    }
    const double n = static_cast<double>(ext.size());
    out["beam_step_prefix_reuse"] = {{"median_s", median(te)}, {"candidates_per_s", n / median(te)}, {"candidates", ext.size()}};
    out["beam_step_full_sequences"] = {{"median_s", median(tf)}, {"candidates_per_s", n / median(tf)}, {"candidates", ext.size()}};
  }
  std::ofstream(a.get("out")) << out.dump(1) << "\n";
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  lumen::init_runtime(argc, argv);
  const std::string usage =
      "usage: bench_viz export --model BIN --out DIR\n"
      "       bench_viz run --model BIN --sae DIR --latent N --out FILE.json [--len 12] [--candidates 512] [--topk 256] "
      "[--reps 10] [--threads N]\n";
  if (argc < 2) {
    std::fputs(usage.c_str(), stderr);
    return 2;
  }
  Args a;
  for (int i = 2; i + 1 < argc; i += 2) a.kv[std::string(argv[i]).substr(2)] = argv[i + 1];
  try {
    const std::string cmd = argv[1];
    if (cmd == "export") {
      torch::NoGradGuard ng;
      lumen::save_hf_checkpoint(lumen::Model::load(a.get("model")), a.get("out"));
      return 0;
    }
    if (cmd == "run") return run(a);
    std::fputs(usage.c_str(), stderr);
    return 2;
  } catch (const lumen::Error& e) {
    std::fprintf(stderr, "bench_viz: %s\n", e.what());
    return 1;
  }
}
