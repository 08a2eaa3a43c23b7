// The feature store's in-memory state and its SQLite form. Private to src/features.
//
// Schema (docs/features.md):
//   meta(key TEXT PRIMARY KEY, value TEXT)            model, corpus, options, windows_done, finished
//   sources(name PRIMARY KEY, idx, kind, hook, n_features, tokens)
//   features(source, feature, nonzero, sum, sum_sq, max, hist BLOB int64[NB])
//   contexts(source, feature, rank, value, window, position, tokens BLOB int32[W], acts BLOB f32[W])
//   logits(source, feature, top_ids BLOB, top_vals BLOB, bottom_ids BLOB, bottom_vals BLOB)
//   vocab(id PRIMARY KEY, piece TEXT)
#pragma once

#include <sqlite3.h>
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

namespace lumen {
namespace features {

constexpr int kBins = 62;  // (0,1e-3), 60 log bins of 0.1 decade up to 1e3, [1e3,inf)

// Everything a harvest accumulates for one source. Top-K lists are kept sorted by
// (value desc, window asc), so merging shards reproduces a single harvest exactly.
struct SourceState {
  std::string name, kind, hook;
  int64_t F = 0, K = 0, W = 0;
  int64_t tokens = 0;
  torch::Tensor nonzero;  // [F] int64
  torch::Tensor sum, sum_sq;  // [F] double
  torch::Tensor max;      // [F] double
  torch::Tensor hist;     // [F, kBins] int64
  torch::Tensor top_val;  // [F,K] float, -inf = empty
  torch::Tensor top_win, top_pos;  // [F,K] int64
  torch::Tensor ctx_tok;  // [F,K,W] int32
  torch::Tensor ctx_act;  // [F,K,W] float
  torch::Tensor dirty;    // [F] bool: contexts changed since the last commit

  void init(int64_t features, int64_t top_k, int64_t width);
  // Merges candidates [F,C] (values, windows, positions, tokens [F,C,W], acts [F,C,W]) into the top-K.
  void merge_top(const torch::Tensor& val, const torch::Tensor& win, const torch::Tensor& pos, const torch::Tensor& tok,
                 const torch::Tensor& act);
};

class Db {
 public:
  Db(const std::string& path, bool create);
  ~Db();
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;
  void exec(const std::string& sql);
  sqlite3* get() const { return db_; }
  const std::string& path() const { return path_; }
  std::string meta(const std::string& key, const std::string& fallback = "") const;
  void set_meta(const std::string& key, const std::string& value);
  void create_schema();
  // Writes stats of every feature and the contexts of dirty ones (all when `all`); no transaction.
  void write_source(SourceState& s, bool all);
  void read_source(SourceState& s, const std::string& name, int64_t K, int64_t W);
  std::vector<std::string> source_names() const;

 private:
  sqlite3* db_ = nullptr;
  std::string path_;
};

// RAII statement.
class Stmt {
 public:
  Stmt(const Db& db, const std::string& sql);
  ~Stmt();
  Stmt& bind(int i, int64_t v);
  Stmt& bind(int i, double v);
  Stmt& bind(int i, const std::string& v);
  Stmt& bind_blob(int i, const void* data, size_t bytes);
  bool step();  // true while rows come back
  void reset();
  int64_t col_int(int i) const;
  double col_double(int i) const;
  std::string col_text(int i) const;
  std::vector<uint8_t> col_blob(int i) const;

 private:
  sqlite3_stmt* st_ = nullptr;
  const Db& db_;
};

}  // namespace features
}  // namespace lumen
