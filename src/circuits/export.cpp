// A circuit on disk: graph.json (close to circuit-tracer / Neuronpedia graphs), faithfulness.json,
// Graphviz DOT, a self-contained HTML page with the graph as SVG, and the faithfulness plot as SVG.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "lumen/circuits.h"
#include "lumen/error.h"
#include "lumen/features.h"
#include "lumen/files.h"

namespace lumen {
namespace {

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string fmt(double v, int prec = 3) {
  std::ostringstream o;
  o.precision(prec);
  o << v;
  return o.str();
}

// Layout: one row per layer (inputs at the bottom, the output on top), nodes by |effect| within a row.
struct Layout {
  std::map<int64_t, std::vector<size_t>> rows;  // layer -> node indices
  std::vector<double> x, y;
  double width = 0, height = 0;
};

Layout layout(const CircuitResult& c) {
  Layout l;
  for (size_t i = 0; i < c.nodes.size(); ++i) l.rows[c.nodes[i].layer].push_back(i);
  size_t widest = 1;
  for (auto& kv : l.rows) {
    std::stable_sort(kv.second.begin(), kv.second.end(), [&](size_t a, size_t b) {
      return std::fabs(c.nodes[a].effect) > std::fabs(c.nodes[b].effect);
    });
    widest = std::max(widest, kv.second.size());
  }
  const double dx = 120, dy = 110, margin = 90;
  l.width = std::max(600.0, widest * dx + 2 * margin);
  l.height = l.rows.size() * dy + 2 * margin - dy + 40;
  l.x.assign(c.nodes.size(), 0);
  l.y.assign(c.nodes.size(), 0);
  int r = 0;
  for (auto it = l.rows.rbegin(); it != l.rows.rend(); ++it, ++r) {
    const auto& idx = it->second;
    const double x0 = (l.width - (idx.size() - 1) * dx) / 2;
    for (size_t k = 0; k < idx.size(); ++k) {
      l.x[idx[k]] = x0 + k * dx;
      l.y[idx[k]] = margin + r * dy;
    }
  }
  return l;
}

std::string graph_svg(const CircuitResult& c) {
  const Layout l = layout(c);
  double wmax = 1e-12, emax = 1e-12;
  for (auto& e : c.links) wmax = std::max(wmax, std::fabs(e.weight));
  for (auto& n : c.nodes) emax = std::max(emax, std::fabs(n.effect));
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << l.width << "\" height=\"" << l.height
    << "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  o << "<defs><marker id=\"arr\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"5\" markerHeight=\"5\" "
       "orient=\"auto\"><path d=\"M0,0L10,5L0,10z\" fill=\"#888\"/></marker></defs>\n";
  for (auto& kv : l.rows) {
    const size_t i = kv.second.front();
    const std::string& site = c.nodes[i].site;
    o << "<text x=\"8\" y=\"" << l.y[i] + 4 << "\" fill=\"#666\">" << xml_escape(site) << "</text>\n";
  }
  // Edges: width by |weight|, blue when patching the source raises m through this edge, red when it lowers it.
  for (auto& e : c.links) {
    const double w = 0.8 + 7 * std::fabs(e.weight) / wmax;
    o << "<line x1=\"" << l.x[e.source] << "\" y1=\"" << l.y[e.source] - 14 << "\" x2=\"" << l.x[e.target] << "\" y2=\""
      << l.y[e.target] + 14 << "\" stroke=\"" << (e.weight >= 0 ? "#2b6cb0" : "#c53030") << "\" stroke-width=\"" << fmt(w)
      << "\" stroke-opacity=\"0.7\" marker-end=\"url(#arr)\"><title>" << xml_escape(c.nodes[e.source].id) << " -> "
      << xml_escape(c.nodes[e.target].id) << ": " << fmt(e.weight) << "</title></line>\n";
  }
  for (size_t i = 0; i < c.nodes.size(); ++i) {
    const auto& n = c.nodes[i];
    const double r = 8 + 10 * std::sqrt(std::fabs(n.effect) / emax);
    const char* fill = n.kind == "error" ? "#bbbbbb" : n.kind == "output" ? "#f6e05e" : n.kind == "input" ? "#9ae6b4"
                     : n.kind == "hidden" ? "#d6bcfa" : (n.effect >= 0 ? "#90cdf4" : "#feb2b2");
    o << "<g><title>" << xml_escape(n.id) << "\nlabel: " << xml_escape(n.label) << "\neffect: " << fmt(n.effect)
      << "\nactivation: " << fmt(n.activation) << "</title>";
    if (n.kind == "error")
      o << "<rect x=\"" << l.x[i] - r << "\" y=\"" << l.y[i] - r << "\" width=\"" << 2 * r << "\" height=\"" << 2 * r
        << "\" fill=\"" << fill << "\" stroke=\"#333\"/>";
    else
      o << "<circle cx=\"" << l.x[i] << "\" cy=\"" << l.y[i] << "\" r=\"" << r << "\" fill=\"" << fill << "\" stroke=\"#333\"/>";
    std::string name = n.kind == "feature" ? "f" + std::to_string(n.feature) : n.kind == "error" ? "err" : n.id;
    if (n.position >= 0 || ((n.kind == "feature" || n.kind == "error") && n.position < -1)) name += "@" + std::to_string(n.position);
    o << "<text x=\"" << l.x[i] << "\" y=\"" << l.y[i] + r + 12 << "\" text-anchor=\"middle\">" << xml_escape(name) << "</text>";
    std::string lab = n.label.size() > 22 ? n.label.substr(0, 21) + "…" : n.label;
    o << "<text x=\"" << l.x[i] << "\" y=\"" << l.y[i] + r + 24 << "\" text-anchor=\"middle\" fill=\"#555\">"
      << xml_escape(lab) << "</text></g>\n";
  }
  o << "</svg>\n";
  return o.str();
}

std::string curve_svg(const CircuitResult& c) {
  const double W = 560, H = 340, L = 60, R = 20, T = 30, B = 50;
  double xmax = 1, ymin = 0, ymax = 1;
  for (auto& p : c.curve) {
    xmax = std::max(xmax, static_cast<double>(p.n_nodes));
    ymin = std::min({ymin, p.faithfulness, p.completeness});
    ymax = std::max({ymax, p.faithfulness, p.completeness});
  }
  auto X = [&](double n) { return L + (W - L - R) * std::log10(std::max(1.0, n)) / std::max(1e-9, std::log10(xmax)); };
  auto Y = [&](double v) { return T + (H - T - B) * (ymax - v) / (ymax - ymin); };
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o << "<line x1=\"" << L << "\" y1=\"" << Y(ymin) << "\" x2=\"" << L << "\" y2=\"" << Y(ymax) << "\" stroke=\"#333\"/>\n";
  o << "<line x1=\"" << L << "\" y1=\"" << Y(ymin) << "\" x2=\"" << W - R << "\" y2=\"" << Y(ymin) << "\" stroke=\"#333\"/>\n";
  for (double v : {0.0, 0.5, 1.0})
    if (v >= ymin && v <= ymax)
      o << "<line x1=\"" << L << "\" y1=\"" << Y(v) << "\" x2=\"" << W - R << "\" y2=\"" << Y(v)
        << "\" stroke=\"#ddd\"/><text x=\"" << L - 6 << "\" y=\"" << Y(v) + 4 << "\" text-anchor=\"end\">" << v << "</text>\n";
  for (double n = 1; n <= xmax; n *= 10)
    o << "<text x=\"" << X(n) << "\" y=\"" << H - B + 16 << "\" text-anchor=\"middle\">" << n << "</text>\n";
  o << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 12 << "\" text-anchor=\"middle\">nodes in the circuit (log scale)</text>\n";
  o << "<text x=\"" << L << "\" y=\"18\">faithfulness (blue) and completeness (orange), " << xml_escape(c.method) << "</text>\n";
  for (int k = 0; k < 2; ++k) {
    std::string pts;
    for (auto& p : c.curve) pts += fmt(X(p.n_nodes), 6) + "," + fmt(Y(k == 0 ? p.faithfulness : p.completeness), 6) + " ";
    const char* col = k == 0 ? "#2b6cb0" : "#dd6b20";
    o << "<polyline points=\"" << pts << "\" fill=\"none\" stroke=\"" << col << "\" stroke-width=\"2\"/>\n";
    for (auto& p : c.curve)
      o << "<circle cx=\"" << X(p.n_nodes) << "\" cy=\"" << Y(k == 0 ? p.faithfulness : p.completeness) << "\" r=\"3\" fill=\""
        << col << "\"><title>" << p.n_nodes << " nodes (threshold " << fmt(p.node_threshold) << "): "
        << fmt(k == 0 ? p.faithfulness : p.completeness) << "</title></circle>\n";
  }
  o << "</svg>\n";
  return o.str();
}

}  // namespace

void label_circuit(CircuitResult& c, const std::string& store_path) {
  auto store = FeatureStore::open(store_path);
  const auto sources = store.sources();
  const std::set<std::string> have(sources.begin(), sources.end());
  auto label = [&](CircuitNode& n) {
    if (n.kind != "feature" || !have.count(n.site + ".sae")) return;
    const auto info = store.info(n.site + ".sae", n.feature);
    // The tokens at the latent's strongest activations, most frequent first.
    std::map<std::string, int> count;
    std::vector<std::string> order;
    for (const auto& ctx : info.contexts) {
      if (ctx.position < 0 || ctx.position >= static_cast<int64_t>(ctx.pieces.size())) continue;
      std::string p;
      for (char ch : ctx.pieces[ctx.position]) p += ch == '\n' ? std::string("\\n") : std::string(1, ch);
      if (count[p]++ == 0) order.push_back(p);
    }
    std::stable_sort(order.begin(), order.end(), [&](const auto& a, const auto& b) { return count[a] > count[b]; });
    std::string s;
    for (size_t i = 0; i < order.size() && i < 3; ++i) s += (i ? " | " : "") + order[i];
    if (!s.empty()) n.label = s;
  };
  for (auto& n : c.nodes) label(n);
  for (auto& n : c.top_nodes) label(n);
}

void write_circuit(const CircuitResult& c, const std::string& out_dir, const std::string& title) {
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  require(!ec, ErrorKind::Io, "cannot create output folder '" + out_dir + "': " + ec.message());
  using nlohmann::json;
  auto node_json = [](const CircuitNode& n) {
    return json{{"id", n.id}, {"node_type", n.kind}, {"layer", n.layer}, {"site", n.site},
                {"position", n.position < 0 && n.position == -1 ? json(nullptr) : json(n.position)},
                {"feature", n.feature < 0 ? json(nullptr) : json(n.feature)}, {"activation", n.activation},
                {"effect", n.effect}, {"label", n.label}};
  };
  json g;
  g["metadata"] = {{"title", title}, {"method", c.method}, {"examples", c.examples}, {"node_threshold", c.threshold},
                   {"candidate_nodes", c.total_nodes}, {"m_clean", c.m_clean}, {"m_patch", c.m_patch},
                   {"m_empty", c.m_empty}, {"accuracy", c.accuracy}, {"faithfulness", c.faithfulness},
                   {"completeness", c.completeness}, {"exact_correlation", c.exact_correlation},
                   {"exact_checked", c.exact_checked}, {"seconds", c.seconds}};
  g["nodes"] = json::array();
  for (const auto& n : c.nodes) g["nodes"].push_back(node_json(n));
  g["links"] = json::array();
  for (const auto& e : c.links)
    g["links"].push_back({{"source", c.nodes[e.source].id}, {"target", c.nodes[e.target].id}, {"weight", e.weight}});
  g["top_nodes"] = json::array();
  for (const auto& n : c.top_nodes) g["top_nodes"].push_back(node_json(n));
  write_file_atomic(out_dir + "/graph.json", [&](std::ostream& o) { o << g.dump(1) << "\n"; });

  json f = json::array();
  for (const auto& p : c.curve)
    f.push_back({{"node_threshold", p.node_threshold}, {"n_nodes", p.n_nodes}, {"faithfulness", p.faithfulness},
                 {"completeness", p.completeness}});
  write_file_atomic(out_dir + "/faithfulness.json", [&](std::ostream& o) { o << f.dump(1) << "\n"; });

  write_file_atomic(out_dir + "/circuit.dot", [&](std::ostream& o) {
    o << "digraph circuit {\n  rankdir=BT;\n  node [fontname=\"sans-serif\" fontsize=10];\n";
    std::map<int64_t, std::vector<size_t>> rows;
    for (size_t i = 0; i < c.nodes.size(); ++i) rows[c.nodes[i].layer].push_back(i);
    for (auto& kv : rows) {
      o << "  { rank=same;";
      for (size_t i : kv.second) o << " \"" << c.nodes[i].id << "\";";
      o << " }\n";
    }
    for (const auto& n : c.nodes) {
      std::string lab = n.id + "\\n" + n.label + "\\neffect " + fmt(n.effect);
      std::string esc;
      for (char ch : lab) esc += ch == '"' ? std::string("\\\"") : std::string(1, ch);
      o << "  \"" << n.id << "\" [label=\"" << esc << "\" shape=" << (n.kind == "error" ? "box" : "ellipse") << "];\n";
    }
    double wmax = 1e-12;
    for (auto& e : c.links) wmax = std::max(wmax, std::fabs(e.weight));
    for (const auto& e : c.links)
      o << "  \"" << c.nodes[e.source].id << "\" -> \"" << c.nodes[e.target].id << "\" [penwidth=" << fmt(0.5 + 5 * std::fabs(e.weight) / wmax)
        << " color=\"" << (e.weight >= 0 ? "#2b6cb0" : "#c53030") << "\" tooltip=\"" << fmt(e.weight) << "\"];\n";
    o << "}\n";
  });

  const std::string curve = curve_svg(c);
  write_file_atomic(out_dir + "/faithfulness.svg", [&](std::ostream& o) { o << curve; });
  write_file_atomic(out_dir + "/circuit.html", [&](std::ostream& o) {
    o << "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" << xml_escape(title)
      << "</title>\n<style>body{font-family:sans-serif;margin:20px;color:#222}table{border-collapse:collapse}"
         "td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}</style></head><body>\n";
    o << "<h2>" << xml_escape(title) << "</h2>\n<p>method " << xml_escape(c.method) << ", " << c.examples
      << " pairs, accuracy " << fmt(c.accuracy) << ", m(M) " << fmt(c.m_clean) << ", m(patch) " << fmt(c.m_patch)
      << ", m(&empty;) " << fmt(c.m_empty) << "<br>node threshold " << fmt(c.threshold) << ": "
      << (c.nodes.empty() ? 0 : c.nodes.size() - 1) << " of " << c.total_nodes << " nodes, faithfulness "
      << fmt(c.faithfulness) << ", completeness " << fmt(c.completeness) << "; linear estimate vs exact patching r = "
      << fmt(c.exact_correlation) << " over " << c.exact_checked << " nodes</p>\n";
    o << "<p>Edges: width by |weight|, <span style=\"color:#2b6cb0\">blue</span> positive, "
         "<span style=\"color:#c53030\">red</span> negative. Squares are error nodes. Hover for details.</p>\n";
    o << graph_svg(c) << "\n<h3>Faithfulness and completeness</h3>\n" << curve;
    o << "<h3>Nodes</h3>\n<table><tr><th>id</th><th>label</th><th>effect</th><th>activation</th></tr>\n";
    for (const auto& n : c.nodes)
      o << "<tr><td>" << xml_escape(n.id) << "</td><td>" << xml_escape(n.label) << "</td><td>" << fmt(n.effect)
        << "</td><td>" << fmt(n.activation) << "</td></tr>\n";
    o << "</table></body></html>\n";
  });
}

}  // namespace lumen
