// A Neuronpedia-style feature page for the terminal, and its JSON form.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "lumen/features.h"

namespace lumen {
namespace {

std::string visible(const std::string& piece) {
  std::string out;
  for (char ch : piece) {
    if (ch == '\n') out += "\\n";
    else if (ch == '\t') out += "\\t";
    else if (static_cast<unsigned char>(ch) < 0x20) out += '?';
    else out += ch;
  }
  return out;
}

// Background from white to deep orange by activation / max (xterm 256 colours).
std::string shade(double frac) {
  static const int ramp[] = {255, 230, 223, 216, 209, 202};
  if (frac <= 0) return "";
  const int i = std::min(5, 1 + static_cast<int>(frac * 5));
  return "\033[48;5;" + std::to_string(ramp[i]) + "m\033[38;5;16m";
}

std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), std::abs(v) >= 100 || (v != 0 && std::abs(v) < 0.01) ? "%.3g" : "%.3f", v);
  return buf;
}

}  // namespace

std::string render_feature_dashboard(const FeatureInfo& fi, bool color) {
  std::ostringstream o;
  const std::string bold = color ? "\033[1m" : "", reset = color ? "\033[0m" : "";
  o << bold << fi.source << "  latent " << fi.feature << reset << "\n";
  o << "density " << fmt(fi.density * 100) << "% (" << fi.nonzero << " of " << fi.tokens << " tokens)   max " << fmt(fi.max)
    << "   mean " << fmt(fi.mean) << "\n";
  o << "quantiles of non-zero activations:";
  for (const auto& [q, v] : fi.quantiles) o << "  q" << q << " " << fmt(v);
  o << "\n";

  // Histogram: the occupied range of log bins as a bar chart, one row of block characters.
  const auto& edges = histogram_edges();
  size_t lo = fi.histogram.size(), hi = 0;
  for (size_t b = 0; b < fi.histogram.size(); ++b)
    if (fi.histogram[b] > 0) lo = std::min(lo, b), hi = b;
  if (lo <= hi) {
    static const char* blocks[] = {" ", "\u2581", "\u2582", "\u2583", "\u2584", "\u2585", "\u2586", "\u2587", "\u2588"};
    const int64_t peak = *std::max_element(fi.histogram.begin(), fi.histogram.end());
    o << "histogram " << fmt(lo == 0 ? 0.0 : edges[lo - 1]) << " ";
    for (size_t b = lo; b <= hi; ++b)
      o << blocks[fi.histogram[b] == 0 ? 0 : 1 + static_cast<int>(7.0 * fi.histogram[b] / std::max<int64_t>(1, peak))];
    o << " " << fmt(hi < edges.size() ? edges[hi] : fi.max) << " (log scale)\n";
  }

  o << "\n" << bold << "top contexts" << reset << "\n";
  const size_t n_show = std::min<size_t>(fi.contexts.size(), 8);
  for (size_t i = 0; i < n_show; ++i) {
    const auto& c = fi.contexts[i];
    o << "  " << fmt(c.max) << "  ";
    for (size_t t = 0; t < c.pieces.size(); ++t) {
      const double frac = fi.max > 0 ? c.acts[t] / fi.max : 0;
      const std::string p = visible(c.pieces[t]);
      if (color) {
        o << shade(frac) << p << reset;
      } else {
        // Without colour: the strongest token in [brackets], other firing tokens marked by '*'.
        if (c.acts[t] >= c.max && c.max > 0) o << "[" << p << "]";
        else if (c.acts[t] > 0) o << p << "*";
        else o << p;
      }
    }
    o << "\n";
  }
  if (fi.contexts.empty()) o << "  (never fired on the harvested text)\n";

  if (!fi.top_logits.empty()) {
    o << "\n" << bold << "logit effects" << reset << " (decoder direction through the unembedding)\n  promotes:";
    for (const auto& [p, v] : fi.top_logits) o << "  " << visible(p) << " " << fmt(v);
    o << "\n  demotes: ";
    for (const auto& [p, v] : fi.bottom_logits) o << "  " << visible(p) << " " << fmt(v);
    o << "\n";
  }
  return o.str();
}

std::string feature_info_json(const FeatureInfo& fi) {
  nlohmann::json j;
  j["source"] = fi.source;
  j["latent"] = fi.feature;
  j["max"] = fi.max;
  j["mean"] = fi.mean;
  j["density"] = fi.density;
  j["tokens"] = fi.tokens;
  j["nonzero"] = fi.nonzero;
  for (const auto& [q, v] : fi.quantiles) {
    std::ostringstream k;
    k << q;
    j["quantiles"][k.str()] = v;
  }
  j["top_contexts"] = nlohmann::json::array();
  for (const auto& c : fi.contexts)
    j["top_contexts"].push_back({{"tokens", c.pieces}, {"token_ids", c.tokens}, {"activations", c.acts}, {"max", c.max},
                                 {"window", c.window}, {"position", c.position}});
  j["logit_effects"]["top"] = nlohmann::json::array();
  j["logit_effects"]["bottom"] = nlohmann::json::array();
  for (const auto& [p, v] : fi.top_logits) j["logit_effects"]["top"].push_back(p);
  for (const auto& [p, v] : fi.bottom_logits) j["logit_effects"]["bottom"].push_back(p);
  j["histogram"]["edges"] = histogram_edges();
  j["histogram"]["counts"] = fi.histogram;
  return j.dump();
}

}  // namespace lumen
