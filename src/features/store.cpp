// The SQLite feature store: schema, chunked writes, reads, the query API and shard merging.
#include "features/store.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>

#include "lumen/error.h"
#include "lumen/features.h"
#include "lumen/files.h"

namespace lumen {
namespace features {

void SourceState::init(int64_t features, int64_t top_k, int64_t width) {
  F = features;
  K = top_k;
  W = width;
  tokens = 0;
  nonzero = torch::zeros({F}, torch::kLong);
  sum = torch::zeros({F}, torch::kDouble);
  sum_sq = torch::zeros({F}, torch::kDouble);
  max = torch::zeros({F}, torch::kDouble);
  hist = torch::zeros({F, kBins}, torch::kLong);
  top_val = torch::full({F, K}, -std::numeric_limits<float>::infinity(), torch::kFloat);
  top_win = torch::full({F, K}, -1, torch::kLong);
  top_pos = torch::zeros({F, K}, torch::kLong);
  ctx_tok = torch::zeros({F, K, W}, torch::kInt);
  ctx_act = torch::zeros({F, K, W}, torch::kFloat);
  dirty = torch::ones({F}, torch::kBool);
}

void SourceState::merge_top(const torch::Tensor& val, const torch::Tensor& win, const torch::Tensor& pos,
                            const torch::Tensor& tok, const torch::Tensor& act) {
  auto v = torch::cat({top_val, val}, 1);
  auto w = torch::cat({top_win, win}, 1);
  // Order by (value desc, window asc): sort by window, then a stable sort by value.
  auto by_win = std::get<1>(torch::sort(torch::where(w < 0, torch::full_like(w, INT64_MAX), w), /*stable=*/true, 1, false));
  auto v1 = v.gather(1, by_win);
  auto by_val = std::get<1>(torch::sort(v1, /*stable=*/true, 1, /*descending=*/true));
  auto idx = by_win.gather(1, by_val).narrow(1, 0, K);  // [F,K] into the concatenation
  auto new_win = w.gather(1, idx);
  dirty = dirty | (new_win != top_win).any(1);
  top_val = v.gather(1, idx);
  top_win = new_win;
  top_pos = torch::cat({top_pos, pos}, 1).gather(1, idx);
  auto idx3 = idx.unsqueeze(-1).expand({F, K, W});
  ctx_tok = torch::cat({ctx_tok, tok}, 1).gather(1, idx3);
  ctx_act = torch::cat({ctx_act, act}, 1).gather(1, idx3);
}

// ---- SQLite -------------------------------------------------------------------------------------

Db::Db(const std::string& path, bool create) : path_(path) {
  if (!create) require(file_exists(path), ErrorKind::Io, path + ": no such feature store");
  const int flags = create ? (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) : SQLITE_OPEN_READONLY;
  if (sqlite3_open_v2(path.c_str(), &db_, flags, nullptr) != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    throw Error(ErrorKind::Io, path + ": cannot open feature store (" + msg + ")");
  }
  sqlite3_busy_timeout(db_, 5000);
  if (!create) {
    sqlite3_stmt* st = nullptr;
    const bool ok = sqlite3_prepare_v2(db_, "SELECT value FROM meta WHERE key='format'", -1, &st, nullptr) == SQLITE_OK &&
                    sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    if (!ok) {
      sqlite3_close(db_);
      db_ = nullptr;
      throw Error(ErrorKind::Format, path + ": not a lumen feature store (no meta table)");
    }
  }
}

Db::~Db() {
  if (db_) sqlite3_close(db_);
}

void Db::exec(const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "?";
    sqlite3_free(err);
    throw Error(ErrorKind::Io, path_ + ": " + msg);
  }
}

Stmt::Stmt(const Db& db, const std::string& sql) : db_(db) {
  if (sqlite3_prepare_v2(db.get(), sql.c_str(), -1, &st_, nullptr) != SQLITE_OK)
    throw Error(ErrorKind::Format, db.path() + ": " + sqlite3_errmsg(db.get()) + " (in: " + sql.substr(0, 60) + ")");
}
Stmt::~Stmt() { sqlite3_finalize(st_); }
Stmt& Stmt::bind(int i, int64_t v) { sqlite3_bind_int64(st_, i, v); return *this; }
Stmt& Stmt::bind(int i, double v) { sqlite3_bind_double(st_, i, v); return *this; }
Stmt& Stmt::bind(int i, const std::string& v) { sqlite3_bind_text(st_, i, v.c_str(), -1, SQLITE_TRANSIENT); return *this; }
Stmt& Stmt::bind_blob(int i, const void* d, size_t n) {
  sqlite3_bind_blob(st_, i, d, static_cast<int>(n), SQLITE_TRANSIENT);
  return *this;
}
bool Stmt::step() {
  const int rc = sqlite3_step(st_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  throw Error(ErrorKind::Io, db_.path() + ": " + sqlite3_errmsg(db_.get()));
}
void Stmt::reset() {
  sqlite3_reset(st_);
  sqlite3_clear_bindings(st_);
}
int64_t Stmt::col_int(int i) const { return sqlite3_column_int64(st_, i); }
double Stmt::col_double(int i) const { return sqlite3_column_double(st_, i); }
std::string Stmt::col_text(int i) const {
  auto p = sqlite3_column_text(st_, i);
  return p ? reinterpret_cast<const char*>(p) : "";
}
std::vector<uint8_t> Stmt::col_blob(int i) const {
  auto p = static_cast<const uint8_t*>(sqlite3_column_blob(st_, i));
  return std::vector<uint8_t>(p, p + sqlite3_column_bytes(st_, i));
}

std::string Db::meta(const std::string& key, const std::string& fallback) const {
  Stmt s(*this, "SELECT value FROM meta WHERE key=?");
  s.bind(1, key);
  return s.step() ? s.col_text(0) : fallback;
}

void Db::set_meta(const std::string& key, const std::string& value) {
  Stmt s(*this, "INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)");
  s.bind(1, key).bind(2, value).step();
}

void Db::create_schema() {
  exec("PRAGMA journal_mode=WAL;"
       "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);"
       "CREATE TABLE IF NOT EXISTS sources(name TEXT PRIMARY KEY, idx INTEGER, kind TEXT, hook TEXT, n_features INTEGER, tokens INTEGER);"
       "CREATE TABLE IF NOT EXISTS features(source TEXT, feature INTEGER, nonzero INTEGER, sum REAL, sum_sq REAL, max REAL, hist BLOB,"
       " PRIMARY KEY(source, feature));"
       "CREATE TABLE IF NOT EXISTS contexts(source TEXT, feature INTEGER, rank INTEGER, value REAL, window INTEGER, position INTEGER,"
       " tokens BLOB, acts BLOB, PRIMARY KEY(source, feature, rank));"
       "CREATE TABLE IF NOT EXISTS logits(source TEXT, feature INTEGER, top_ids BLOB, top_vals BLOB, bottom_ids BLOB, bottom_vals BLOB,"
       " PRIMARY KEY(source, feature));"
       "CREATE TABLE IF NOT EXISTS vocab(id INTEGER PRIMARY KEY, piece TEXT);");
  set_meta("format", "lumen-features-1");
}

void Db::write_source(SourceState& s, bool all) {
  {
    Stmt st(*this, "UPDATE sources SET tokens=? WHERE name=?");
    st.bind(1, s.tokens).bind(2, s.name).step();
  }
  auto nz = s.nonzero.accessor<int64_t, 1>();
  auto sm = s.sum.accessor<double, 1>();
  auto sq = s.sum_sq.accessor<double, 1>();
  auto mx = s.max.accessor<double, 1>();
  // Raw pointers into contiguous copies: indexing a tensor per row costs a dispatch each, and a
  // commit writes up to F*K contexts.
  const auto hist = s.hist.contiguous();
  const int64_t* hist_p = hist.data_ptr<int64_t>();  // [F, kBins]
  Stmt fs(*this, "INSERT OR REPLACE INTO features(source, feature, nonzero, sum, sum_sq, max, hist) VALUES(?,?,?,?,?,?,?)");
  for (int64_t f = 0; f < s.F; ++f) {
    fs.bind(1, s.name).bind(2, f).bind(3, nz[f]).bind(4, sm[f]).bind(5, sq[f]).bind(6, mx[f]);
    fs.bind_blob(7, hist_p + f * kBins, kBins * sizeof(int64_t));
    fs.step();
    fs.reset();
  }
  auto dirty = s.dirty.accessor<bool, 1>();
  auto val = s.top_val.accessor<float, 2>();
  auto win = s.top_win.accessor<int64_t, 2>();
  auto pos = s.top_pos.accessor<int64_t, 2>();
  const auto tok = s.ctx_tok.contiguous();
  const auto act = s.ctx_act.contiguous();
  const int32_t* tok_p = tok.data_ptr<int32_t>();  // [F,K,W]
  const float* act_p = act.data_ptr<float>();       // [F,K,W]
  Stmt del(*this, "DELETE FROM contexts WHERE source=? AND feature=?");
  Stmt ins(*this, "INSERT INTO contexts(source, feature, rank, value, window, position, tokens, acts) VALUES(?,?,?,?,?,?,?,?)");
  for (int64_t f = 0; f < s.F; ++f) {
    if (!all && !dirty[f]) continue;
    del.bind(1, s.name).bind(2, f).step();
    del.reset();
    for (int64_t r = 0; r < s.K && win[f][r] >= 0; ++r) {
      const int64_t at = (f * s.K + r) * s.W;
      ins.bind(1, s.name).bind(2, f).bind(3, r).bind(4, static_cast<double>(val[f][r])).bind(5, win[f][r]).bind(6, pos[f][r]);
      ins.bind_blob(7, tok_p + at, s.W * sizeof(int32_t));
      ins.bind_blob(8, act_p + at, s.W * sizeof(float));
      ins.step();
      ins.reset();
    }
  }
  s.dirty.fill_(false);
}

void Db::read_source(SourceState& s, const std::string& name, int64_t K, int64_t W) {
  Stmt src(*this, "SELECT kind, hook, n_features, tokens FROM sources WHERE name=?");
  src.bind(1, name);
  require(src.step(), ErrorKind::Format, path_ + ": no source '" + name + "'");
  s.name = name;
  s.kind = src.col_text(0);
  s.hook = src.col_text(1);
  s.init(src.col_int(2), K, W);
  s.tokens = src.col_int(3);
  auto nz = s.nonzero.accessor<int64_t, 1>();
  auto sm = s.sum.accessor<double, 1>();
  auto sq = s.sum_sq.accessor<double, 1>();
  auto mx = s.max.accessor<double, 1>();
  Stmt fs(*this, "SELECT feature, nonzero, sum, sum_sq, max, hist FROM features WHERE source=?");
  fs.bind(1, name);
  while (fs.step()) {
    const int64_t f = fs.col_int(0);
    require(f >= 0 && f < s.F, ErrorKind::Format, path_ + ": feature index out of range in source " + name);
    nz[f] = fs.col_int(1);
    sm[f] = fs.col_double(2);
    sq[f] = fs.col_double(3);
    mx[f] = fs.col_double(4);
    auto blob = fs.col_blob(5);
    require(blob.size() == kBins * sizeof(int64_t), ErrorKind::Format, path_ + ": corrupt histogram for " + name);
    std::memcpy(s.hist.data_ptr<int64_t>() + f * kBins, blob.data(), blob.size());  // init() made it contiguous
  }
  auto val = s.top_val.accessor<float, 2>();
  auto win = s.top_win.accessor<int64_t, 2>();
  auto pos = s.top_pos.accessor<int64_t, 2>();
  Stmt cs(*this, "SELECT feature, rank, value, window, position, tokens, acts FROM contexts WHERE source=?");
  cs.bind(1, name);
  while (cs.step()) {
    const int64_t f = cs.col_int(0), r = cs.col_int(1);
    if (f < 0 || f >= s.F || r < 0 || r >= K) continue;
    val[f][r] = static_cast<float>(cs.col_double(2));
    win[f][r] = cs.col_int(3);
    pos[f][r] = cs.col_int(4);
    auto tb = cs.col_blob(5), ab = cs.col_blob(6);
    require(tb.size() == W * sizeof(int32_t) && ab.size() == W * sizeof(float), ErrorKind::Format,
            path_ + ": corrupt context for " + name + " feature " + std::to_string(f));
    std::memcpy(s.ctx_tok.data_ptr<int32_t>() + (f * K + r) * W, tb.data(), tb.size());
    std::memcpy(s.ctx_act.data_ptr<float>() + (f * K + r) * W, ab.data(), ab.size());
  }
  s.dirty.fill_(false);
}

std::vector<std::string> Db::source_names() const {
  std::vector<std::string> out;
  Stmt s(*this, "SELECT name FROM sources ORDER BY idx");
  while (s.step()) out.push_back(s.col_text(0));
  return out;
}

}  // namespace features

// ---- histogram helpers --------------------------------------------------------------------------

const std::vector<double>& histogram_edges() {
  static const std::vector<double> e = [] {
    std::vector<double> v;
    for (int i = 0; i <= 60; ++i) v.push_back(std::pow(10.0, -3.0 + i / 10.0));
    return v;
  }();
  return e;
}

namespace {

// Value below which a share `target` of the histogram's mass lies (geometric interpolation).
double hist_quantile(const std::vector<int64_t>& h, int64_t total, double q, double max) {
  if (total <= 0) return 0.0;
  const auto& e = histogram_edges();
  const double target = q * total;
  double cum = 0;
  for (size_t b = 0; b < h.size(); ++b) {
    if (h[b] == 0) continue;
    if (cum + h[b] >= target) {
      const double lo = b == 0 ? e[0] / 10 : e[b - 1];
      const double hi = b < e.size() ? e[b] : std::max(max, e.back());
      const double frac = (target - cum) / h[b];
      return std::min(max, lo * std::pow(hi / lo, frac));
    }
    cum += h[b];
  }
  return max;
}

}  // namespace

// ---- FeatureStore (read side) -------------------------------------------------------------------

struct FeatureStore::Impl {
  std::unique_ptr<features::Db> db;
  std::map<std::string, int64_t> n_features;
  std::vector<std::string> order;
  std::map<int32_t, std::string> vocab;
};

FeatureStore::FeatureStore() : p_(std::make_unique<Impl>()) {}
FeatureStore::~FeatureStore() = default;
FeatureStore::FeatureStore(FeatureStore&&) noexcept = default;

FeatureStore FeatureStore::open(const std::string& path) {
  FeatureStore fs;
  fs.p_->db = std::make_unique<features::Db>(path, false);
  features::Stmt s(*fs.p_->db, "SELECT name, n_features FROM sources ORDER BY idx");
  while (s.step()) {
    fs.p_->order.push_back(s.col_text(0));
    fs.p_->n_features[s.col_text(0)] = s.col_int(1);
  }
  features::Stmt v(*fs.p_->db, "SELECT id, piece FROM vocab");
  while (v.step()) fs.p_->vocab[static_cast<int32_t>(v.col_int(0))] = v.col_text(1);
  return fs;
}

std::vector<std::string> FeatureStore::sources() const { return p_->order; }
std::string FeatureStore::default_source() const {
  require(!p_->order.empty(), ErrorKind::Format, p_->db->path() + ": the store has no sources");
  return p_->order.front();
}
int64_t FeatureStore::n_features(const std::string& source) const {
  auto it = p_->n_features.find(source);
  if (it == p_->n_features.end()) {
    std::string have;
    for (auto& s : p_->order) have += (have.empty() ? "" : ", ") + s;
    throw Error(ErrorKind::Arg, p_->db->path() + ": no source '" + source + "' (have: " + have + ")");
  }
  return it->second;
}
std::string FeatureStore::meta(const std::string& key) const { return p_->db->meta(key); }

FeatureInfo FeatureStore::info(const std::string& source, int64_t feature) const {
  const int64_t F = n_features(source);
  require(feature >= 0 && feature < F, ErrorKind::Arg,
          "latent " + std::to_string(feature) + " is outside [0," + std::to_string(F) + ") for source " + source);
  const auto& db = *p_->db;
  FeatureInfo fi;
  fi.source = source;
  fi.feature = feature;
  {
    features::Stmt s(db, "SELECT tokens FROM sources WHERE name=?");
    s.bind(1, source);
    if (s.step()) fi.tokens = s.col_int(0);
  }
  features::Stmt s(db, "SELECT nonzero, sum, max, hist FROM features WHERE source=? AND feature=?");
  s.bind(1, source).bind(2, feature);
  if (s.step()) {
    fi.nonzero = s.col_int(0);
    fi.mean = fi.tokens > 0 ? s.col_double(1) / fi.tokens : 0;
    fi.max = s.col_double(2);
    auto blob = s.col_blob(3);
    fi.histogram.resize(features::kBins);
    std::memcpy(fi.histogram.data(), blob.data(), std::min(blob.size(), fi.histogram.size() * sizeof(int64_t)));
  }
  fi.density = fi.tokens > 0 ? static_cast<double>(fi.nonzero) / fi.tokens : 0;
  for (double q : {0.5, 0.9, 0.99}) fi.quantiles.push_back({q, hist_quantile(fi.histogram, fi.nonzero, q, fi.max)});
  auto piece = [&](int32_t id) {
    auto it = p_->vocab.find(id);
    return it == p_->vocab.end() ? "<" + std::to_string(id) + ">" : it->second;
  };
  features::Stmt c(db, "SELECT value, window, position, tokens, acts FROM contexts WHERE source=? AND feature=? ORDER BY rank");
  c.bind(1, source).bind(2, feature);
  while (c.step()) {
    FeatureContext ctx;
    ctx.max = static_cast<float>(c.col_double(0));
    ctx.window = c.col_int(1);
    ctx.position = c.col_int(2);
    auto tb = c.col_blob(3), ab = c.col_blob(4);
    ctx.tokens.resize(tb.size() / 4);
    std::memcpy(ctx.tokens.data(), tb.data(), ctx.tokens.size() * 4);
    ctx.acts.resize(ab.size() / 4);
    std::memcpy(ctx.acts.data(), ab.data(), ctx.acts.size() * 4);
    for (int32_t t : ctx.tokens) ctx.pieces.push_back(piece(t));
    fi.contexts.push_back(std::move(ctx));
  }
  features::Stmt l(db, "SELECT top_ids, top_vals, bottom_ids, bottom_vals FROM logits WHERE source=? AND feature=?");
  l.bind(1, source).bind(2, feature);
  if (l.step()) {
    for (int side = 0; side < 2; ++side) {
      auto ids = l.col_blob(side * 2), vals = l.col_blob(side * 2 + 1);
      auto& out = side == 0 ? fi.top_logits : fi.bottom_logits;
      for (size_t i = 0; i < ids.size() / 4 && i < vals.size() / 4; ++i) {
        int32_t id;
        float v;
        std::memcpy(&id, ids.data() + 4 * i, 4);
        std::memcpy(&v, vals.data() + 4 * i, 4);
        out.push_back({piece(id), v});
      }
    }
  }
  return fi;
}

double FeatureStore::dataset_max(const std::string& source, int64_t feature) const {
  features::Stmt s(*p_->db, "SELECT max FROM features WHERE source=? AND feature=?");
  s.bind(1, source).bind(2, feature);
  require(s.step(), ErrorKind::Arg, p_->db->path() + ": no statistics for " + source + " latent " + std::to_string(feature));
  return s.col_double(0);
}

double FeatureStore::percentile(const std::string& source, int64_t feature, double x) const {
  features::Stmt s(*p_->db,
                   "SELECT f.nonzero, f.hist, src.tokens FROM features f JOIN sources src ON src.name = f.source "
                   "WHERE f.source=? AND f.feature=?");
  s.bind(1, source).bind(2, feature);
  require(s.step(), ErrorKind::Arg, p_->db->path() + ": no statistics for " + source + " latent " + std::to_string(feature));
  const int64_t nonzero = s.col_int(0), tokens = s.col_int(2);
  if (tokens <= 0 || x < 0) return 0.0;
  auto blob = s.col_blob(1);
  std::vector<int64_t> h(features::kBins);
  std::memcpy(h.data(), blob.data(), std::min(blob.size(), h.size() * sizeof(int64_t)));
  const auto& e = histogram_edges();
  double below = static_cast<double>(tokens - nonzero);  // zeros sit below any x >= 0
  for (size_t b = 0; b < h.size(); ++b) {
    const double lo = b == 0 ? 0.0 : e[b - 1];
    const double hi = b < e.size() ? e[b] : std::numeric_limits<double>::infinity();
    if (x >= hi) {
      below += h[b];
    } else if (x > lo) {
      const double l = b == 0 ? e[0] / 10 : lo;
      const double frac = std::isinf(hi) ? 0.5 : std::log(std::max(x, l) / l) / std::log(hi / l);
      below += h[b] * std::clamp(frac, 0.0, 1.0);
      break;
    } else {
      break;
    }
  }
  return below / tokens;
}

std::vector<std::pair<int64_t, double>> FeatureStore::top(const std::string& source, const std::string& by, int64_t n) const {
  require(by == "density" || by == "max", ErrorKind::Arg, "--by must be density or max, got '" + by + "'");
  n_features(source);
  const std::string expr = by == "max" ? "f.max" : "CAST(f.nonzero AS REAL) / MAX(src.tokens, 1)";
  features::Stmt s(*p_->db, "SELECT f.feature, " + expr +
                                " FROM features f JOIN sources src ON src.name = f.source WHERE f.source=? ORDER BY 2 DESC, 1 LIMIT ?");
  s.bind(1, source).bind(2, n);
  std::vector<std::pair<int64_t, double>> out;
  while (s.step()) out.push_back({s.col_int(0), s.col_double(1)});
  return out;
}

// ---- merging shards -----------------------------------------------------------------------------

void merge_feature_stores(const std::string& out, const std::vector<std::string>& inputs) {
  require(inputs.size() >= 2, ErrorKind::Arg, "merge needs at least two stores");
  std::vector<std::unique_ptr<features::Db>> dbs;
  for (const auto& in : inputs) dbs.push_back(std::make_unique<features::Db>(in, false));
  features::Db& first = *dbs[0];
  const auto names = first.source_names();
  const int64_t K = std::stoll(first.meta("top_k", "0")), W = std::stoll(first.meta("context_width", "0"));
  for (size_t i = 1; i < dbs.size(); ++i) {
    for (const char* key : {"model", "ctx_len", "top_k", "context_width", "n_shards", "sources"})
      require(dbs[i]->meta(key) == first.meta(key), ErrorKind::Arg,
              inputs[i] + ": " + key + " differs from " + inputs[0] + " ('" + dbs[i]->meta(key) + "' vs '" + first.meta(key) + "')");
    require(dbs[i]->meta("shard") != first.meta("shard") || first.meta("n_shards") == "1", ErrorKind::Arg,
            inputs[i] + ": the same shard as " + inputs[0] + " (merging it would count windows twice)");
  }
  const std::string tmp = out + ".tmp." + std::to_string(::getpid());
  std::remove(tmp.c_str());
  {
    features::Db db(tmp, true);
    db.create_schema();
    // meta, sources, vocab and logit effects are the same in every shard: copy the first's.
    features::Stmt attach(db, "ATTACH DATABASE ? AS src");
    attach.bind(1, inputs[0]).step();
    db.exec("BEGIN");
    db.exec("INSERT OR REPLACE INTO meta SELECT * FROM src.meta;"
            "INSERT INTO sources SELECT * FROM src.sources;"
            "INSERT INTO vocab SELECT * FROM src.vocab;"
            "INSERT INTO logits SELECT * FROM src.logits;");
    int64_t windows = 0, tokens = 0;
    for (const auto& d : dbs) {
      windows += std::stoll(d->meta("windows_done", "0"));
      tokens += std::stoll(d->meta("tokens_done", "0"));
      require(d->meta("finished") == "1", ErrorKind::Arg, d->path() + ": harvest not finished (run it with --resume first)");
    }
    for (const auto& name : names) {
      features::SourceState acc;
      first.read_source(acc, name, K, W);
      for (size_t i = 1; i < dbs.size(); ++i) {
        features::SourceState s;
        dbs[i]->read_source(s, name, K, W);
        acc.tokens += s.tokens;
        acc.nonzero += s.nonzero;
        acc.sum += s.sum;
        acc.sum_sq += s.sum_sq;
        acc.max = torch::maximum(acc.max, s.max);
        acc.hist += s.hist;
        acc.merge_top(s.top_val, s.top_win, s.top_pos, s.ctx_tok, s.ctx_act);
      }
      db.write_source(acc, true);
    }
    db.set_meta("windows_done", std::to_string(windows));
    db.set_meta("tokens_done", std::to_string(tokens));
    db.set_meta("shard", "merged");
    db.exec("COMMIT");
    db.exec("DETACH DATABASE src");
    db.exec("PRAGMA journal_mode=DELETE");
  }
  if (std::rename(tmp.c_str(), out.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error(ErrorKind::Io, out + ": cannot move the merged store into place");
  }
}

}  // namespace lumen
