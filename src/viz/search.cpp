// The search methods of feature visualization, all on the shared Objective and budget:
// ADAPT (beam-search initialization + adaptive gradient-guided mutation), GCG, EPO-style
// population search, random search and dataset search. docs/viz.md describes ADAPT step by step.
#include <algorithm>
#include <chrono>
#include <limits>
#include <cmath>
#include <map>
#include <numeric>
#include <set>

#include "lumen/error.h"
#include "lumen/features.h"
#include "viz/objective.h"

namespace lumen {
namespace viz {
namespace {

// Every valid sequence evaluated, with its score: duplicates are never charged twice, and the
// best distinct sequences come from here at the end.
struct Seen {
  std::map<Seq, Score> all;
  double lambda = 0;
  const Score* find(const Seq& s) const {
    auto it = all.find(s);
    return it == all.end() ? nullptr : &it->second;
  }
  std::vector<Seq> top(size_t n) const {
    std::vector<std::pair<double, const Seq*>> v;
    for (const auto& [s, sc] : all) v.push_back({sc.objective(lambda), &s});
    std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    std::vector<Seq> out;
    for (size_t i = 0; i < v.size() && i < n; ++i) out.push_back(*v[i].second);
    return out;
  }
  double best() const {
    double b = -std::numeric_limits<double>::infinity();
    for (const auto& [s, sc] : all) b = std::max(b, sc.objective(lambda));
    return b;
  }
};

// Scores sequences through the cache of seen ones; only new, valid sequences are evaluated. When
// the sequences are edits of known ones (`bases`), they share those bases' leading positions
// (Objective::evaluate_edits). Returns one score per input (invalid ones get -inf), and how many
// inputs were scored (the budget can cut the tail).
size_t score_all(Objective& obj, Seen& seen, const std::vector<Seq>& seqs, std::vector<Score>& scores,
                 const std::vector<Seq>& bases = {}) {
  scores.assign(seqs.size(), Score{-std::numeric_limits<double>::infinity(), 0, 0});
  std::vector<Seq> fresh;
  std::vector<size_t> where;
  std::set<Seq> queued;
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (seen.find(seqs[i]) || queued.count(seqs[i])) continue;
    if (!obj.valid(seqs[i])) continue;
    queued.insert(seqs[i]);
    fresh.push_back(seqs[i]);
    where.push_back(i);
  }
  auto sc = bases.empty() ? obj.evaluate(fresh) : obj.evaluate_edits(fresh, bases);
  for (size_t j = 0; j < sc.size(); ++j) seen.all[fresh[j]] = sc[j];
  size_t scored = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (const Score* s = seen.find(seqs[i])) {
      scores[i] = *s;
      ++scored;
    }
  }
  return sc.size() == fresh.size() ? seqs.size() : scored;
}

// Gradient rows [T,V] with tokens that can never be valid pushed to -inf.
torch::Tensor masked(const torch::Tensor& g, const Objective& obj) {
  return g.masked_fill(obj.allowed_mask().logical_not().view({1, -1}), -std::numeric_limits<float>::infinity());
}

void say(const VizOptions& o, const std::string& s) {
  if (o.log) o.log(s);
}

// ---- ADAPT ---------------------------------------------------------------------------------------
struct Member {
  Seq seq;
  Score sc;
};

// Keeps the W best distinct members of `pool` by the objective.
std::vector<Member> select_top(std::vector<Member> pool, size_t W, double lambda) {
  std::sort(pool.begin(), pool.end(), [&](const Member& a, const Member& b) { return a.sc.objective(lambda) > b.sc.objective(lambda); });
  std::vector<Member> out;
  std::set<Seq> have;
  for (auto& m : pool) {
    if (out.size() >= W) break;
    if (!std::isfinite(m.sc.search) || have.count(m.seq)) continue;
    have.insert(m.seq);
    out.push_back(std::move(m));
  }
  return out;
}

// Step 1: left-to-right beam search. Every next token of every beam (or a gradient shortlist for
// large vocabularies) is scored with the prefixes' keys/values reused, so one step costs one token
// per candidate.
std::vector<Member> beam_init(Objective& obj, Seen& seen, int64_t len, std::mt19937_64& rng) {
  const VizOptions& o = obj.options();
  const double lam = o.fluency;
  size_t W = static_cast<size_t>(std::max<int64_t>(1, o.beam_width));
  const int64_t all_ok = static_cast<int64_t>(obj.allowed().size());
  int64_t K = o.beam_shortlist > 0 ? std::min(o.beam_shortlist, all_ok) : (obj.vocab() <= 4096 ? all_ok : 256);
  // The beam search gets at most half of the budget: about len * W * K tokens (plus the prefixes).
  // A small budget first narrows the shortlist (to 16 by gradient), then the beam.
  const double half = o.beam_budget_share * static_cast<double>(obj.remaining());
  auto cost = [&](double w, double k) { return len * w * k + w * (len + 1) * (len + 2) / 2.0; };
  if (cost(W, K) > half) K = std::max<int64_t>(16, static_cast<int64_t>((half - cost(W, 0)) / (len * double(W))));
  while (W > 1 && cost(W, K) > half) --W;
  K = std::min(K, all_ok);
  std::vector<Member> beams(1);
  for (int64_t t = 0; t < len; ++t) {
    std::vector<Seq> prefixes;
    for (const auto& b : beams) prefixes.push_back(b.seq);
    std::vector<std::pair<int64_t, int32_t>> ext;
    if (K >= all_ok) {
      for (size_t w = 0; w < prefixes.size(); ++w)
        for (int32_t tok : obj.allowed()) ext.push_back({static_cast<int64_t>(w), tok});
    } else {
      // Shortlist from the gradient at position t of the prefix plus a random placeholder token.
      std::vector<Seq> probe;
      for (const auto& p : prefixes) {
        probe.push_back(p);
        probe.back().push_back(obj.random_token(rng));
      }
      auto g = masked(obj.gradients(probe).select(1, t), obj);  // [W,V]
      auto top = std::get<1>(g.topk(K, 1)).contiguous();
      auto ta = top.accessor<int64_t, 2>();
      for (size_t w = 0; w < prefixes.size(); ++w)
        for (int64_t j = 0; j < K; ++j) ext.push_back({static_cast<int64_t>(w), static_cast<int32_t>(ta[w][j])});
    }
    auto sc = obj.extend(prefixes, ext);
    if (sc.empty()) break;  // budget spent: the rest is filled in at random below
    std::vector<size_t> order(sc.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return sc[a].objective(lam) > sc[b].objective(lam); });
    std::vector<Member> next;
    // Validity is checked in score order, so only the sequences that could enter the beam pay it.
    for (size_t i : order) {
      if (next.size() >= W) break;
      Seq s = prefixes[ext[i].first];
      s.push_back(ext[i].second);
      if (!obj.valid(s)) continue;
      next.push_back({s, sc[i]});
    }
    if (next.empty()) break;
    beams = std::move(next);
  }
  std::vector<Member> out;
  for (auto& b : beams) {
    if (static_cast<int64_t>(b.seq.size()) == len) {
      seen.all[b.seq] = b.sc;
      out.push_back(b);
    }
  }
  if (out.empty()) {  // the budget ended inside the beam search: complete at random
    std::vector<Seq> seqs;
    for (auto& b : beams) {
      Seq s = b.seq;
      Seq tail = obj.random_seq(len - static_cast<int64_t>(s.size()), rng);
      s.insert(s.end(), tail.begin(), tail.end());
      seqs.push_back(s);
    }
    std::vector<Score> sc;
    score_all(obj, seen, seqs, sc);
    for (size_t i = 0; i < seqs.size(); ++i)
      if (std::isfinite(sc[i].search)) out.push_back({seqs[i], sc[i]});
  }
  return out;
}

// Samples one token from the first k entries of a sorted gradient shortlist (values vals, token
// ids idx) at temperature tau, in units of the shortlist's spread so that tau means the same for
// every latent's scale.
int32_t sample_swap(const float* vals, const int64_t* idx, int64_t k, double tau, std::mt19937_64& rng) {
  const double spread = std::max(1e-8, static_cast<double>(vals[0]) - vals[k - 1]);
  std::vector<double> w(k);
  double total = 0;
  for (int64_t j = 0; j < k; ++j) {
    w[j] = std::exp((vals[j] - vals[0]) / (spread * tau / 4.0));
    if (!std::isfinite(w[j])) w[j] = 0;
    total += w[j];
  }
  if (total <= 0) w.assign(w.size(), 1.0);
  return static_cast<int32_t>(idx[std::discrete_distribution<size_t>(w.begin(), w.end())(rng)]);
}

void run_adapt(Objective& obj, Seen& seen, int64_t len, std::mt19937_64& rng, int64_t& steps) {
  const VizOptions& o = obj.options();
  const double lam = o.fluency;
  const size_t W = static_cast<size_t>(std::max<int64_t>(1, o.beam_width));
  auto beam = beam_init(obj, seen, len, rng);
  if (beam.empty()) return;
  say(o, "adapt: beam search done, best " + std::to_string(beam[0].sc.act) + " after " + std::to_string(obj.used()) + " tokens");
  // Step 2: adaptive mutation. m positions per child, top-k shortlist, temperature: all shrink
  // while the elite improves (exploit) and grow while it does not (explore).
  const int64_t k_min = 4, k_max = std::min<int64_t>(256, static_cast<int64_t>(obj.allowed().size()));
  const int64_t m_max = std::max<int64_t>(1, (len + 2) / 3);
  int64_t m = 1, k = std::min<int64_t>(32, k_max);
  double tau = 1.0;
  int64_t stall = 0, plateaus = 0;
  double elite = beam[0].sc.objective(lam);
  const int64_t C = std::max<int64_t>(1, o.adapt_candidates);
  while (obj.affordable(static_cast<int64_t>(beam.size()) * (len + 1) + (len + 1))) {
    ++steps;
    std::vector<Seq> parents;
    for (const auto& b : beam) parents.push_back(b.seq);
    auto G = obj.gradients(parents);  // [W,T,V]
    G = G.masked_fill(obj.allowed_mask().logical_not().view({1, 1, -1}), -std::numeric_limits<float>::infinity());
    auto [tv, ti] = G.topk(k, 2);  // [W,T,k], sorted
    tv = tv.contiguous();
    ti = ti.contiguous();
    const float* tvp = tv.data_ptr<float>();
    const int64_t* tip = ti.data_ptr<int64_t>();
    std::vector<Seq> kids;
    std::set<Seq> have;
    for (int64_t c = 0; c < C * 3 && static_cast<int64_t>(kids.size()) < C; ++c) {
      // Better parents get more children: rank r is drawn with weight 1/(r+1).
      std::vector<double> wts(beam.size());
      for (size_t r = 0; r < wts.size(); ++r) wts[r] = 1.0 / (r + 1);
      const size_t pi = std::discrete_distribution<size_t>(wts.begin(), wts.end())(rng);
      Seq child = beam[pi].seq;
      std::vector<int64_t> pos(len);
      std::iota(pos.begin(), pos.end(), 0);
      std::shuffle(pos.begin(), pos.end(), rng);
      for (int64_t j = 0; j < std::min(m, len); ++j) {
        const int64_t off = (static_cast<int64_t>(pi) * len + pos[j]) * k;
        child[pos[j]] = sample_swap(tvp + off, tip + off, k, tau, rng);
      }
      if (child == beam[pi].seq || have.count(child) || seen.find(child)) continue;
      have.insert(child);
      kids.push_back(std::move(child));
    }
    std::vector<Score> sc;
    score_all(obj, seen, kids, sc, parents);
    std::vector<Member> pool = beam;
    for (size_t i = 0; i < kids.size(); ++i)
      if (std::isfinite(sc[i].search)) pool.push_back({kids[i], sc[i]});
    beam = select_top(std::move(pool), W, lam);
    const double now = beam[0].sc.objective(lam);
    if (now > elite + 1e-6 * std::max(1.0, std::fabs(elite))) {
      elite = now;
      stall = 0;
      m = std::max<int64_t>(1, m - 1);
      k = std::max(k_min, k / 2);
      tau = std::max(0.25, tau * 0.7);
    } else {
      ++stall;
      m = std::min(m_max, m + 1);
      k = std::min(k_max, k * 2);
      tau = std::min(4.0, tau * 1.5);
    }
    if (stall >= o.adapt_patience) {
      // Plateau: keep the elite; perturb the rest of the beam around it, and every third plateau
      // restart them from fresh random sequences (a different basin).
      ++plateaus;
      std::vector<Seq> fresh;
      for (size_t i = 1; i < W; ++i) {
        Seq s;
        if (plateaus % 3 == 0) {
          s = obj.random_seq(len, rng);
        } else {
          s = beam[0].seq;
          const int64_t r = std::max<int64_t>(1, len / 4);
          for (int64_t j = 0; j < r; ++j) s[std::uniform_int_distribution<int64_t>(0, len - 1)(rng)] = obj.random_token(rng);
        }
        fresh.push_back(s);
      }
      std::vector<Score> fs;
      score_all(obj, seen, fresh, fs, {beam[0].seq});  // perturbations share the elite's prefix
      std::vector<Member> nb{beam[0]};
      std::set<Seq> hv{beam[0].seq};
      for (size_t i = 0; i < fresh.size(); ++i)
        if (std::isfinite(fs[i].search) && !hv.count(fresh[i])) {
          hv.insert(fresh[i]);
          nb.push_back({fresh[i], fs[i]});
        }
      for (size_t i = 1; i < beam.size() && nb.size() < W; ++i)
        if (!hv.count(beam[i].seq)) nb.push_back(beam[i]);
      beam = std::move(nb);
      stall = 0;
      m = 1;
      k = std::min<int64_t>(32, k_max);
      tau = 1.0;
    }
    if (steps % 25 == 0)
      say(o, "adapt: step " + std::to_string(steps) + ", " + std::to_string(obj.used()) + " tokens, best " +
                 std::to_string(beam[0].sc.act) + " (m " + std::to_string(m) + ", k " + std::to_string(k) + ")");
  }
}

// ---- GCG (Zou et al. 2023; nanoGCG defaults) ------------------------------------------------------
void run_gcg(Objective& obj, Seen& seen, int64_t len, std::mt19937_64& rng, int64_t& steps) {
  const VizOptions& o = obj.options();
  const double lam = o.fluency;
  Seq cur = obj.random_seq(len, rng);
  std::vector<Score> sc;
  score_all(obj, seen, {cur}, sc);
  const int64_t k = std::min<int64_t>(o.gcg_topk, static_cast<int64_t>(obj.allowed().size()));
  for (int64_t step = 0; step < o.gcg_steps && obj.affordable(2 * (len + 1)); ++step) {
    ++steps;
    auto G = obj.gradients({cur})[0];                   // [T,V]
    auto top = std::get<1>(masked(G, obj).topk(k, 1));  // [T,k]
    auto ta = top.accessor<int64_t, 2>();
    std::vector<Seq> cands;
    for (int64_t c = 0; c < o.gcg_candidates; ++c) {
      Seq s = cur;
      const int64_t p = std::uniform_int_distribution<int64_t>(0, len - 1)(rng);
      s[p] = static_cast<int32_t>(ta[p][std::uniform_int_distribution<int64_t>(0, k - 1)(rng)]);
      cands.push_back(std::move(s));
    }
    score_all(obj, seen, cands, sc, {cur});
    // GCG moves to the best candidate of the step even when it is worse than the current one.
    double bv = -std::numeric_limits<double>::infinity();
    for (size_t i = 0; i < cands.size(); ++i)
      if (sc[i].objective(lam) > bv && cands[i] != cur) {
        bv = sc[i].objective(lam);
        cur = cands[i];
      }
    if (steps % 25 == 0)
      say(o, "gcg: step " + std::to_string(steps) + ", " + std::to_string(obj.used()) + " tokens, best " + std::to_string(seen.best()));
  }
}

// ---- EPO-style population search (Thompson et al. 2024) ------------------------------------------
void run_epo(Objective& obj, Seen& seen, int64_t len, std::mt19937_64& rng, int64_t& steps) {
  const VizOptions& o = obj.options();
  const int64_t P = std::max<int64_t>(1, o.epo_population);
  std::vector<double> lam(P);
  for (int64_t i = 0; i < P; ++i)
    lam[i] = P == 1 ? o.epo_lambda_min
                    : o.epo_lambda_min * std::pow(o.epo_lambda_max / o.epo_lambda_min, double(i) / double(P - 1));
  std::vector<Seq> pop;
  for (int64_t i = 0; i < P; ++i) pop.push_back(obj.random_seq(len, rng));
  std::vector<Score> psc;
  score_all(obj, seen, pop, psc);
  std::vector<std::pair<Seq, Score>> frontier;  // Pareto set in (activation up, CE down)
  auto update_frontier = [&](const Seq& s, const Score& sc) {
    for (const auto& f : frontier)
      if (f.second.search >= sc.search && f.second.ce <= sc.ce) return;
    frontier.erase(std::remove_if(frontier.begin(), frontier.end(),
                                  [&](const auto& f) { return sc.search >= f.second.search && sc.ce <= f.second.ce; }),
                   frontier.end());
    frontier.push_back({s, sc});
  };
  const int64_t k = std::min<int64_t>(o.epo_topk, static_cast<int64_t>(obj.allowed().size()));
  while (obj.affordable(P * (len + 1) * 2)) {
    ++steps;
    auto G = obj.gradients(pop, lam);  // [P,T,V], each member under its own lambda
    G = G.masked_fill(obj.allowed_mask().logical_not().view({1, 1, -1}), -std::numeric_limits<float>::infinity());
    std::vector<Seq> kids;
    auto top = std::get<1>(G.topk(k, 2)).contiguous();  // [P,T,k]
    auto ta = top.accessor<int64_t, 3>();
    for (int64_t i = 0; i < P; ++i) {
      for (int64_t c = 0; c < o.epo_children; ++c) {
        Seq s = pop[i];
        const int64_t p = std::uniform_int_distribution<int64_t>(0, len - 1)(rng);
        s[p] = static_cast<int32_t>(ta[i][p][std::uniform_int_distribution<int64_t>(0, k - 1)(rng)]);
        kids.push_back(std::move(s));
      }
    }
    std::vector<Score> ksc;
    score_all(obj, seen, kids, ksc, pop);
    // Each member takes the best of the whole pool under its own lambda.
    std::vector<std::pair<Seq, Score>> pool;
    for (int64_t i = 0; i < P; ++i)
      if (const Score* ps = seen.find(pop[i])) pool.push_back({pop[i], *ps});
    for (size_t i = 0; i < kids.size(); ++i)
      if (std::isfinite(ksc[i].search)) pool.push_back({kids[i], ksc[i]});
    for (const auto& [s, sc] : pool) update_frontier(s, sc);
    if (pool.empty()) break;
    for (int64_t i = 0; i < P; ++i) {
      size_t best = 0;
      for (size_t j = 1; j < pool.size(); ++j)
        if (pool[j].second.objective(lam[i]) > pool[best].second.objective(lam[i])) best = j;
      pop[i] = pool[best].first;
    }
    if (o.epo_restart_every > 0 && steps % o.epo_restart_every == 0 && !frontier.empty()) {
      // Restart: every member from a random point of the Pareto frontier.
      for (int64_t i = 0; i < P; ++i)
        pop[i] = frontier[std::uniform_int_distribution<size_t>(0, frontier.size() - 1)(rng)].first;
    }
    if (steps % 25 == 0)
      say(o, "epo: step " + std::to_string(steps) + ", " + std::to_string(obj.used()) + " tokens, best " + std::to_string(seen.best()));
  }
}

// ---- random search ----------------------------------------------------------------------------
void run_random(Objective& obj, Seen& seen, int64_t len, std::mt19937_64& rng, int64_t& steps) {
  const VizOptions& o = obj.options();
  while (obj.affordable(len + 1)) {
    ++steps;
    const int64_t n = std::min<int64_t>(o.batch, obj.remaining() / (len + 1));
    std::vector<Seq> seqs;
    for (int64_t i = 0; i < n; ++i) seqs.push_back(obj.random_seq(len, rng));
    std::vector<Score> sc;
    const size_t before = seen.all.size();
    score_all(obj, seen, seqs, sc);
    if (seen.all.size() == before) break;  // nothing new can be drawn
  }
}

// ---- dataset search: windows of the top dataset contexts that end at their maximum ------------
void run_dataset(Objective& obj, Seen& seen, int64_t len, int32_t bos) {
  const VizOptions& o = obj.options();
  std::vector<Seq> cands;
  for (const auto& [toks, pos] : o.dataset_contexts) {
    const int64_t first = !toks.empty() && toks[0] == bos ? 1 : 0;
    const int64_t n = static_cast<int64_t>(toks.size());
    if (n - first < len || pos < first) continue;
    int64_t start = std::max<int64_t>(first, pos - len + 1);
    if (start + len > n) start = n - len;
    Seq s(toks.begin() + start, toks.begin() + start + len);
    cands.push_back(s);
    if (!obj.valid(s)) {
      // A window cut mid-word does not survive the round trip; its re-encoding (last len tokens) may.
      Seq re = obj.reencode(obj.text(s));
      if (static_cast<int64_t>(re.size()) >= len) cands.push_back(Seq(re.end() - len, re.end()));
    }
  }
  std::vector<Score> sc;
  score_all(obj, seen, cands, sc);
}

}  // namespace
}  // namespace viz

std::vector<std::pair<std::vector<int32_t>, int64_t>> store_contexts(const FeatureStore& store, const std::string& source,
                                                                     int64_t feature) {
  std::vector<std::pair<std::vector<int32_t>, int64_t>> out;
  for (const auto& c : store.info(source, feature).contexts) out.push_back({c.tokens, c.position});
  return out;
}

VizResult visualize(const Model& model, const VizTarget& target, const VizOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  static const std::set<std::string> methods{"adapt", "gcg", "epo", "random", "dataset"};
  require(methods.count(opt.method), ErrorKind::Arg, "viz: unknown method '" + opt.method + "' (adapt, gcg, epo, random, dataset)");
  require(opt.budget_tokens > 0, ErrorKind::Arg, "viz: the budget must be > 0 tokens");
  const int64_t len_hi = std::max(opt.len, opt.len_max);
  VizResult res;
  res.method = opt.method;
  std::mt19937_64 rng(opt.seed * 0x9E3779B97F4A7C15ull + 17);
  std::vector<VizSequence> rows;
  for (int64_t len = opt.len; len <= len_hi; ++len) {
    // Lengths in a range split the budget equally.
    VizOptions o = opt;
    o.len = len;
    o.budget_tokens = opt.budget_tokens / (len_hi - opt.len + 1);
    viz::Objective obj(model, target, o, opt.method == "epo");
    viz::Seen s;
    s.lambda = opt.fluency;
    int64_t steps = 0;
    if (opt.method == "adapt") viz::run_adapt(obj, s, len, rng, steps);
    else if (opt.method == "gcg") viz::run_gcg(obj, s, len, rng, steps);
    else if (opt.method == "epo") viz::run_epo(obj, s, len, rng, steps);
    else if (opt.method == "random") viz::run_random(obj, s, len, rng, steps);
    else viz::run_dataset(obj, s, len, model.require_tokenizer().bos_id());
    for (const auto& q : s.top(static_cast<size_t>(opt.n_best))) rows.push_back(obj.finish(q));
    res.tokens_used += obj.used();
    res.candidates += obj.candidates();
    res.steps += steps;
  }
  std::sort(rows.begin(), rows.end(), [](const VizSequence& a, const VizSequence& b) { return a.objective > b.objective; });
  for (auto& r : rows)
    if (static_cast<int64_t>(res.best.size()) < opt.n_best) res.best.push_back(std::move(r));
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

}  // namespace lumen
