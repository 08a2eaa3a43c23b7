// `lumen viz bench`: latents sampled by density strata in every SAE, every method under the same
// budget and seeds, scored against the feature store's dataset statistics; CSV + markdown table.
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "lumen/error.h"
#include "lumen/features.h"
#include "lumen/files.h"
#include "lumen/sae.h"
#include "lumen/viz.h"

namespace lumen {

std::pair<double, double> mean_ci95(const std::vector<double>& xs) {
  const size_t n = xs.size();
  if (n == 0) return {std::nan(""), std::nan("")};
  double m = 0;
  for (double x : xs) m += x;
  m /= n;
  if (n == 1) return {m, std::nan("")};
  double v = 0;
  for (double x : xs) v += (x - m) * (x - m);
  v /= (n - 1);
  // Two-sided 97.5% Student t quantiles for df = 1..30; the normal value beyond.
  static const double t[] = {12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
                             2.201,  2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
                             2.080,  2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042};
  const double q = n - 1 <= 30 ? t[n - 2] : 1.96;
  return {m, q * std::sqrt(v / n)};
}

namespace {

struct Row {
  int64_t layer = 0, latent = 0, seed = 0;
  std::string method, text;
  double density = 0, dmax = 0, act = 0, norm = 0, pct = 0, ce = 0, seconds = 0;
  int64_t tokens = 0, candidates = 0;
  std::vector<int32_t> ids;
};

std::string csv_quote(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"') o += "\"\"";
    else if (c == '\n') o += "\\n";
    else o += c;
  }
  return o + "\"";
}

std::string fmt(double x, int prec = 3) {
  if (!std::isfinite(x)) return "-";
  std::ostringstream o;
  o.setf(std::ios::fixed);
  o.precision(prec);
  o << x;
  return o.str();
}

std::string pm(const std::pair<double, double>& mc, int prec = 3) {
  return fmt(mc.first, prec) + (std::isfinite(mc.second) ? " ± " + fmt(mc.second, prec) : "");
}

// 1 - |A∩B|/|A∪B| over token sets: 0 when two seeds found the same tokens.
double token_distance(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  if (a.empty() || b.empty()) return 1.0;
  std::set<int32_t> A(a.begin() + 1, a.end()), B(b.begin() + 1, b.end()), U = A;
  U.insert(B.begin(), B.end());
  size_t inter = 0;
  for (int32_t x : A) inter += B.count(x);
  return U.empty() ? 0.0 : 1.0 - double(inter) / double(U.size());
}

}  // namespace

VizBenchResult viz_bench(const Model& model, const VizBenchOptions& opt) {
  require(!opt.sae_dirs.empty(), ErrorKind::Arg, "viz bench: give at least one --sae");
  require(!opt.store.empty(), ErrorKind::Arg, "viz bench: --store is needed (dataset max and percentiles)");
  require(opt.latents >= 1 && opt.seeds >= 1, ErrorKind::Arg, "viz bench: --latents and --seeds must be >= 1");
  auto log = [&](const std::string& s) {
    if (opt.log) opt.log(s);
  };
  auto store = FeatureStore::open(opt.store);
  const auto sources = store.sources();
  std::vector<Row> rows;
  std::mt19937_64 rng(opt.seed + 1234567);
  int64_t run_i = 0;
  const int64_t runs_total = static_cast<int64_t>(opt.sae_dirs.size()) * opt.latents * static_cast<int64_t>(opt.methods.size()) * opt.seeds;
  for (const auto& dir : opt.sae_dirs) {
    auto sae = load_sae(dir, model.device());
    check_sae_fits(sae, model);
    const std::string hook = sae.config().hook_name, src = hook + ".sae";
    require(std::find(sources.begin(), sources.end(), src) != sources.end(), ErrorKind::Arg,
            "viz bench: the store " + opt.store + " has no source '" + src + "' (harvest it with this SAE)");
    const int64_t layer = HookPoint::parse(hook)->layer;
    // Alive latents by density, cut into equal strata; one latent drawn from each.
    auto by_density = store.top(src, "density", store.n_features(src));
    std::vector<std::pair<int64_t, double>> alive;
    for (const auto& [f, d] : by_density)
      if (d > 0 && store.dataset_max(src, f) > 0) alive.push_back({f, d});
    std::reverse(alive.begin(), alive.end());  // sparsest first
    const int64_t n = std::min<int64_t>(opt.latents, static_cast<int64_t>(alive.size()));
    std::vector<std::pair<int64_t, double>> picked;
    for (int64_t s = 0; s < n; ++s) {
      const size_t lo = alive.size() * s / n, hi = std::max(lo + 1, alive.size() * (s + 1) / n);
      picked.push_back(alive[std::uniform_int_distribution<size_t>(lo, hi - 1)(rng)]);
    }
    for (const auto& [f, density] : picked) {
      const double dmax = store.dataset_max(src, f);
      VizTarget tg;
      tg.hook = hook;
      tg.sae = &sae;
      tg.index = f;
      const auto contexts = store_contexts(store, src, f);
      for (const auto& method : opt.methods) {
        for (int64_t seed = 0; seed < opt.seeds; ++seed) {
          ++run_i;
          VizOptions o = opt.viz;
          o.method = method;
          o.seed = seed;
          o.log = nullptr;
          if (method == "dataset") o.dataset_contexts = contexts;
          auto r = visualize(model, tg, o);
          Row row;
          row.layer = layer;
          row.latent = f;
          row.seed = seed;
          row.method = method;
          row.density = density;
          row.dmax = dmax;
          row.tokens = r.tokens_used;
          row.candidates = r.candidates;
          row.seconds = r.seconds;
          if (!r.best.empty()) {
            row.act = r.best[0].activation;
            row.ce = r.best[0].ce;
            row.text = r.best[0].text;
            row.ids = r.best[0].ids;
          }
          row.norm = row.act / dmax;
          row.pct = store.percentile(src, f, row.act);
          rows.push_back(row);
          log("[" + std::to_string(run_i) + "/" + std::to_string(runs_total) + "] L" + std::to_string(layer) + " latent " +
              std::to_string(f) + " " + method + " seed " + std::to_string(seed) + ": " + fmt(row.norm) + "x max, " +
              std::to_string(row.tokens) + " tokens, " + fmt(row.seconds, 2) + " s");
        }
      }
    }
  }

  // ---- CSV ----
  ::mkdir(opt.out_dir.c_str(), 0755);
  VizBenchResult res;
  res.csv_path = opt.out_dir + "/viz_bench.csv";
  res.md_path = opt.out_dir + "/viz_bench.md";
  std::ostringstream csv;
  csv << "layer,latent,density,dataset_max,method,seed,activation,normalized,percentile,ce,tokens,candidates,seconds,ids,text\n";
  for (const auto& r : rows) {
    std::string ids;
    for (size_t i = 0; i < r.ids.size(); ++i) ids += (i ? " " : "") + std::to_string(r.ids[i]);
    csv << r.layer << "," << r.latent << "," << r.density << "," << r.dmax << "," << r.method << "," << r.seed << "," << r.act
        << "," << r.norm << "," << r.pct << "," << r.ce << "," << r.tokens << "," << r.candidates << "," << r.seconds << ","
        << ids << "," << csv_quote(r.text) << "\n";
  }
  write_file_atomic(res.csv_path, [&](std::ostream& f) { f << csv.str(); });

  // ---- markdown: per layer and method, seeds averaged per latent, CI across latents ----
  std::map<std::pair<int64_t, std::string>, std::map<int64_t, std::vector<const Row*>>> g;
  std::set<int64_t> layers;
  for (const auto& r : rows) {
    g[{r.layer, r.method}][r.latent].push_back(&r);
    layers.insert(r.layer);
  }
  std::ostringstream md;
  md << "| layer | method | normalized act. | ≥0.5× max | ≥1.0× max | percentile | CE/token | diversity | tokens | cand./s |\n"
     << "|---|---|---|---|---|---|---|---|---|---|\n";
  std::map<std::pair<int64_t, std::string>, double> mean_norm;
  for (int64_t layer : layers) {
    for (const auto& method : opt.methods) {
      auto it = g.find({layer, method});
      if (it == g.end()) continue;
      std::vector<double> norm, s05, s10, pct, ce, div;
      double tokens = 0, cands = 0, secs = 0;
      size_t nrun = 0;
      for (const auto& [f, rs] : it->second) {
        double a = 0, b = 0, c = 0, p = 0, e = 0;
        for (const Row* r : rs) {
          a += r->norm;
          b += r->norm >= 0.5;
          c += r->norm >= 1.0;
          p += r->pct;
          e += r->ce;
          tokens += r->tokens;
          cands += r->candidates;
          secs += r->seconds;
          ++nrun;
        }
        const double k = static_cast<double>(rs.size());
        norm.push_back(a / k);
        s05.push_back(b / k);
        s10.push_back(c / k);
        pct.push_back(p / k);
        ce.push_back(e / k);
        if (rs.size() > 1) {
          double d = 0;
          int pairs = 0;
          for (size_t i = 0; i < rs.size(); ++i)
            for (size_t j = i + 1; j < rs.size(); ++j, ++pairs) d += token_distance(rs[i]->ids, rs[j]->ids);
          div.push_back(d / pairs);
        }
      }
      mean_norm[{layer, method}] = mean_ci95(norm).first;
      md << "| " << layer << " | " << method << " | " << pm(mean_ci95(norm)) << " | " << pm(mean_ci95(s05), 2) << " | "
         << pm(mean_ci95(s10), 2) << " | " << fmt(mean_ci95(pct).first, 4) << " | " << fmt(mean_ci95(ce).first, 2) << " | "
         << (div.empty() ? std::string("-") : fmt(mean_ci95(div).first, 2)) << " | "
         << static_cast<int64_t>(tokens / std::max<size_t>(1, nrun)) << " | " << fmt(secs > 0 ? cands / secs : 0, 0) << " |\n";
    }
  }
  if (std::find(opt.methods.begin(), opt.methods.end(), "adapt") != opt.methods.end()) {
    md << "\nADAPT vs the gradient baselines (mean normalized activation):\n";
    for (int64_t layer : layers) {
      md << "- layer " << layer << ":";
      for (const char* other : {"gcg", "epo"}) {
        auto a = mean_norm.find({layer, "adapt"}), b = mean_norm.find({layer, other});
        if (a == mean_norm.end() || b == mean_norm.end()) continue;
        md << " " << (a->second > b->second ? "beats " : "does NOT beat ") << other << " (" << fmt(a->second) << " vs "
           << fmt(b->second) << ");";
      }
      md << "\n";
    }
  }
  res.markdown = md.str();
  write_file_atomic(res.md_path, [&](std::ostream& f) { f << res.markdown; });
  return res;
}

}  // namespace lumen
