// Concept labels for the flags method: keyword rules over plain text (the built-in TinyStories set
// or a rules file), JSONL corpora, and flags.json. A text's labels say which concepts it needs;
// the paper uses given labels, and for TinyStories we derive them with these documented rules.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <set>
#include <sstream>

#include "lumen/error.h"
#include "lumen/files.h"
#include "lumen/flags.h"

namespace lumen {
namespace {

using json = nlohmann::json;

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Lower-case words made of letters (apostrophes split words: "dog's" -> "dog", "s").
std::set<std::string> words_of(const std::string& text) {
  std::set<std::string> out;
  std::string w;
  for (char ch : text) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (std::isalpha(c)) {
      w += static_cast<char>(std::tolower(c));
    } else if (!w.empty()) {
      out.insert(w);
      w.clear();
    }
  }
  if (!w.empty()) out.insert(w);
  return out;
}

std::string trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
  return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
}

}  // namespace

std::vector<ConceptRule> default_tinystories_rules() {
  // Chosen so each concept is in roughly 1-15% of TinyStories stories (docs/flags.md lists counts).
  return {
      {"dog", {"dog", "dogs", "puppy", "puppies"}},
      {"cat", {"cat", "cats", "kitten", "kittens", "kitty"}},
      {"bird", {"bird", "birds"}},
      {"fish", {"fish", "fishes"}},
      {"rain", {"rain", "rains", "rained", "raining", "rainy"}},
      {"sun", {"sun", "sunny", "sunshine"}},
      {"ball", {"ball", "balls"}},
      {"tree", {"tree", "trees"}},
      {"flower", {"flower", "flowers"}},
      {"park", {"park", "parks"}},
      {"happy", {"happy", "happily"}},
      {"sad", {"sad", "sadly"}},
  };
}

std::vector<ConceptRule> load_rules(const std::string& path) {
  std::istringstream in(read_file(path));
  std::vector<ConceptRule> rules;
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (auto h = line.find('#'); h != std::string::npos) line = line.substr(0, h);
    line = trim(line);
    if (line.empty()) continue;
    auto colon = line.find(':');
    require(colon != std::string::npos && colon > 0, ErrorKind::Format,
            path + ":" + std::to_string(n) + ": expected 'name: word word ...'");
    ConceptRule r;
    r.name = trim(line.substr(0, colon));
    std::istringstream ws(line.substr(colon + 1));
    std::string w;
    while (ws >> w) r.words.push_back(lower(w));
    require(!r.words.empty(), ErrorKind::Format, path + ":" + std::to_string(n) + ": concept '" + r.name + "' has no words");
    for (const auto& o : rules)
      require(o.name != r.name, ErrorKind::Format, path + ":" + std::to_string(n) + ": concept '" + r.name + "' defined twice");
    rules.push_back(std::move(r));
  }
  require(!rules.empty() && rules.size() <= 64, ErrorKind::Format,
          path + ": expected 1 to 64 concept rules, found " + std::to_string(rules.size()));
  return rules;
}

bool rule_matches(const ConceptRule& rule, const std::string& text) {
  const auto ws = words_of(text);
  for (const auto& w : rule.words)
    if (ws.count(w)) return true;
  return false;
}

std::vector<int64_t> ConceptCorpus::positives() const {
  std::vector<int64_t> p(concepts.size(), 0);
  for (const auto& it : items)
    for (size_t c = 0; c < p.size() && c < it.labels.size(); ++c) p[c] += it.labels[c];
  return p;
}

std::vector<std::string> read_texts(const std::string& path, int64_t max_texts, int64_t skip) {
  std::istringstream in(read_file(path));
  std::vector<std::string> out;
  std::string line;
  int64_t seen = 0;
  while (std::getline(in, line) && (max_texts < 0 || static_cast<int64_t>(out.size()) < max_texts)) {
    line = trim(line);
    if (!line.empty() && seen++ >= skip) out.push_back(line);
  }
  require(!out.empty(), ErrorKind::Io,
          path + ": no texts" + (skip > 0 ? " after the first " + std::to_string(skip) : std::string()) +
              " (expected one text per line)");
  return out;
}

ConceptCorpus label_texts(const std::vector<std::string>& texts, const std::vector<ConceptRule>& rules) {
  ConceptCorpus c;
  for (const auto& r : rules) c.concepts.push_back(r.name);
  c.items.reserve(texts.size());
  for (const auto& t : texts) {
    const auto ws = words_of(t);
    LabelledText it{t, std::vector<uint8_t>(rules.size(), 0)};
    for (size_t i = 0; i < rules.size(); ++i)
      for (const auto& w : rules[i].words)
        if (ws.count(w)) {
          it.labels[i] = 1;
          break;
        }
    c.items.push_back(std::move(it));
  }
  return c;
}

ConceptCorpus load_concepts_jsonl(const std::string& path, int64_t max_texts) {
  std::istringstream in(read_file(path));
  std::vector<std::pair<std::string, std::map<std::string, int>>> rows;
  std::vector<std::string> names;
  auto note = [&](const std::string& n) {
    if (std::find(names.begin(), names.end(), n) == names.end()) names.push_back(n);
  };
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line) && (max_texts < 0 || static_cast<int64_t>(rows.size()) < max_texts)) {
    ++n;
    if (trim(line).empty()) continue;
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      throw Error(ErrorKind::Format, path + ":" + std::to_string(n) + ": not valid JSON (" + e.what() + ")");
    }
    require(j.is_object() && j.contains("text") && j["text"].is_string(), ErrorKind::Format,
            path + ":" + std::to_string(n) + ": expected an object with a string \"text\"");
    std::map<std::string, int> lab;
    if (j.contains("labels")) {
      require(j["labels"].is_object(), ErrorKind::Format, path + ":" + std::to_string(n) + ": \"labels\" must be an object of 0/1");
      for (auto& kv : j["labels"].items()) {
        note(kv.key());
        lab[kv.key()] = kv.value().is_boolean() ? kv.value().get<bool>() : (kv.value().get<double>() > 0.5);
      }
    }
    if (j.contains("concepts")) {
      require(j["concepts"].is_array(), ErrorKind::Format, path + ":" + std::to_string(n) + ": \"concepts\" must be an array of names");
      for (auto& v : j["concepts"]) {
        note(v.get<std::string>());
        lab[v.get<std::string>()] = 1;
      }
    }
    rows.emplace_back(j["text"].get<std::string>(), std::move(lab));
  }
  require(!rows.empty(), ErrorKind::Format, path + ": no labelled texts");
  require(!names.empty() && names.size() <= 64, ErrorKind::Format,
          path + ": expected 1 to 64 concept names, found " + std::to_string(names.size()));
  ConceptCorpus c;
  c.concepts = names;
  for (auto& r : rows) {
    LabelledText it{r.first, std::vector<uint8_t>(names.size(), 0)};
    for (size_t i = 0; i < names.size(); ++i) {
      auto f = r.second.find(names[i]);
      it.labels[i] = f != r.second.end() && f->second ? 1 : 0;
    }
    c.items.push_back(std::move(it));
  }
  return c;
}

void save_concepts_jsonl(const std::string& path, const ConceptCorpus& corpus) {
  write_file_atomic(path, [&](std::ostream& os) {
    for (const auto& it : corpus.items) {
      json j;
      j["text"] = it.text;
      json lab = json::object();
      for (size_t i = 0; i < corpus.concepts.size(); ++i) lab[corpus.concepts[i]] = static_cast<int>(it.labels[i]);
      j["labels"] = lab;
      os << j.dump() << "\n";
    }
  });
}

// ---- flags.json ---------------------------------------------------------------------------------

std::string FlagSpec::hook_name() const { return "blocks." + std::to_string(layer) + ".hook_resid_post"; }

int64_t FlagSpec::index_of(const std::string& concept) const {
  for (size_t i = 0; i < concepts.size(); ++i)
    if (concepts[i] == concept) return static_cast<int64_t>(i);
  std::string known;
  for (const auto& c : concepts) known += (known.empty() ? "" : ", ") + c;
  throw Error(ErrorKind::Arg, "unknown flag concept '" + concept + "' (this checkpoint has: " + known + ")");
}

std::string flag_scope_name(FlagScope s) { return s == FlagScope::Prefix ? "prefix" : "window"; }

std::string flag_supply_name(FlagSupply s) {
  return s == FlagSupply::None ? "none" : s == FlagSupply::OnOnly ? "on-only" : "all";
}

FlagSupply parse_flag_supply(const std::string& s) {
  if (s == "none") return FlagSupply::None;
  if (s == "all") return FlagSupply::All;
  if (s == "on-only") return FlagSupply::OnOnly;
  throw Error(ErrorKind::Arg, "unknown flag supply '" + s + "' (expected none, all or on-only)");
}

FlagScope parse_flag_scope(const std::string& s) {
  if (s == "window") return FlagScope::Window;
  if (s == "prefix") return FlagScope::Prefix;
  throw Error(ErrorKind::Arg, "unknown flag scope '" + s + "' (expected window or prefix)");
}

FlagSpec load_flag_spec(const std::string& dir) {
  const std::string path = join_path(dir, "flags.json");
  json j;
  try {
    j = json::parse(read_file(path));
  } catch (const json::exception& e) {
    throw Error(ErrorKind::Format, path + ": not valid JSON (" + e.what() + ")");
  }
  FlagSpec s;
  try {
    s.concepts = j.at("concepts").get<std::vector<std::string>>();
    s.dims = j.at("dims").get<std::vector<int64_t>>();
    s.layer = j.at("layer").get<int64_t>();
    s.on_value = j.at("on_value").get<double>();
    s.off_value = j.value("off_value", 0.0);
    s.base_model = j.value("base_model", std::string());
    s.seq_len = j.value("seq_len", int64_t{128});
    if (j.contains("rules"))
      for (auto& kv : j["rules"].items()) s.rules.push_back({kv.key(), kv.value().get<std::vector<std::string>>()});
  } catch (const json::exception& e) {
    throw Error(ErrorKind::Format, path + ": expected concepts, dims, layer, on_value (" + e.what() + ")");
  }
  require(s.concepts.size() == s.dims.size() && !s.dims.empty(), ErrorKind::Format,
          path + ": 'concepts' and 'dims' must be non-empty and the same length");
  const std::string scope = j.contains("scope") && j["scope"].is_string() ? j["scope"].get<std::string>() : "window";
  require(scope == "window" || scope == "prefix", ErrorKind::Format,
          path + ": 'scope' must be \"window\" or \"prefix\", found \"" + scope + "\"");
  s.scope = parse_flag_scope(scope);
  const std::string supply = j.contains("supply") && j["supply"].is_string() ? j["supply"].get<std::string>() : "all";
  require(supply == "none" || supply == "all" || supply == "on-only", ErrorKind::Format,
          path + ": 'supply' must be \"none\", \"all\" or \"on-only\", found \"" + supply + "\"");
  s.supply = parse_flag_supply(supply);
  if (j.contains("training") && j["training"].is_object()) s.training = j["training"].dump();
  // Rules are stored as an object (sorted by name); put them back in concept order.
  if (!s.rules.empty()) {
    std::vector<ConceptRule> ordered;
    for (const auto& c : s.concepts)
      for (const auto& r : s.rules)
        if (r.name == c) ordered.push_back(r);
    s.rules = ordered;
  }
  return s;
}

void save_flag_spec(const std::string& dir, const FlagSpec& s) {
  json j;
  j["method"] = "inert flags (Ye & Cui 2026)";
  j["concepts"] = s.concepts;
  j["dims"] = s.dims;
  j["layer"] = s.layer;
  j["hook"] = s.hook_name();
  j["on_value"] = s.on_value;
  j["off_value"] = s.off_value;
  j["base_model"] = s.base_model;
  j["seq_len"] = s.seq_len;
  j["scope"] = flag_scope_name(s.scope);
  j["supply"] = flag_supply_name(s.supply);
  if (!s.training.empty()) j["training"] = json::parse(s.training);
  if (!s.rules.empty()) {
    json r = json::object();
    for (const auto& rule : s.rules) r[rule.name] = rule.words;
    j["rules"] = r;
  }
  write_file_atomic(join_path(dir, "flags.json"), [&](std::ostream& os) { os << j.dump(2) << "\n"; });
}

}  // namespace lumen
