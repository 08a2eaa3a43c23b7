// Activations for SAE training: a tokenized corpus cut into windows, the model run to the hook in
// batches, BOS positions dropped, rows served from a shuffle buffer that refills when half empty.
// Every random choice comes from one 64-bit state, so the store's position can be saved and a
// resumed run sees exactly the rows an uninterrupted one would.
#include <torch/torch.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "lumen/error.h"
#include "lumen/files.h"
#include "lumen/sae.h"

namespace lumen {
namespace {

// splitmix64: tiny, fast, and its whole state is one integer.
uint64_t next_u64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Fisher-Yates permutation of [0, n) as an int64 tensor.
at::Tensor permutation(int64_t n, uint64_t& rng) {
  auto t = torch::arange(n, torch::kLong);
  int64_t* p = t.data_ptr<int64_t>();
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[next_u64(rng) % static_cast<uint64_t>(i + 1)]);
  return t;
}

bool is_jsonl(const std::string& path) {
  auto ends = [&](const char* e) {
    const size_t n = std::strlen(e);
    return path.size() >= n && path.compare(path.size() - n, n, e) == 0;
  };
  return ends(".jsonl") || ends(".jsonl.txt") || ends(".ndjson");
}

int64_t hook_stop_layer(const std::string& hook, int64_t n_layers) {
  auto hp = HookPoint::parse(hook);
  if (!hp) return -1;
  if (hp->site == HookSite::ln_final) return -1;
  if (hp->is_global()) return 0;  // embeddings run before any block
  return std::min<int64_t>(hp->layer + 1, n_layers);
}

}  // namespace

at::Tensor tokenize_corpus(const Model& model, const std::string& corpus, int64_t ctx_len, const std::string& text_field,
                           int64_t max_tokens) {
  require(ctx_len >= 2, ErrorKind::Arg, "context length must be at least 2, got " + std::to_string(ctx_len));
  require(ctx_len <= model.config().n_ctx, ErrorKind::Arg,
          "context length " + std::to_string(ctx_len) + " exceeds the model's n_ctx " + std::to_string(model.config().n_ctx));
  const Tokenizer& tok = model.require_tokenizer();
  std::ifstream in(corpus, std::ios::binary);
  require(in.good(), ErrorKind::Io, corpus + ": cannot open corpus");
  const bool jsonl = is_jsonl(corpus);
  const bool bos_family = tok.adds_bos_by_default() && tok.bos_id() >= 0;
  const int32_t bos = tok.bos_id() >= 0 ? tok.bos_id() : tok.eos_id();

  // Windows: [BOS] + ctx_len - 1 tokens of the document stream (SAELens's prepend_bos), where
  // documents are separated by BOS (llama2.c / SentencePiece) or EOS (GPT-2).
  std::vector<int64_t> out;
  std::vector<int32_t> window;
  auto push = [&](int32_t id) {
    if (window.empty() && bos >= 0) {
      window.push_back(bos);
      if (id == bos) return;
    }
    window.push_back(id);
    if (static_cast<int64_t>(window.size()) == ctx_len) {
      out.insert(out.end(), window.begin(), window.end());
      window.clear();
    }
  };
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (max_tokens > 0 && static_cast<int64_t>(out.size()) >= max_tokens) break;
    std::string text;
    if (jsonl) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        throw Error(ErrorKind::Format, corpus + ":" + std::to_string(line_no) + ": not a JSON object (" + e.what() + ")");
      }
      require(j.is_object() && j.contains(text_field) && j[text_field].is_string(), ErrorKind::Format,
              corpus + ":" + std::to_string(line_no) + ": no string field '" + text_field + "' (set the text field)");
      text = j[text_field].get<std::string>();
    } else {
      text = line;
      if (!text.empty() && text.back() == '\r') text.pop_back();
    }
    if (text.empty()) continue;
    auto ids = tok.encode(text, bos_family);
    if (!bos_family && tok.eos_id() >= 0) ids.push_back(tok.eos_id());
    for (int32_t id : ids) push(id);
  }
  const int64_t W = static_cast<int64_t>(out.size()) / ctx_len;
  require(W > 0, ErrorKind::Arg,
          corpus + ": holds fewer than " + std::to_string(ctx_len) + " tokens, not even one context window");
  return torch::from_blob(out.data(), {W, ctx_len}, torch::kLong).clone();
}

struct ActivationStore::Impl {
  const Model* model = nullptr;
  ActivationStoreOptions opt;
  at::Tensor windows;  // [W, ctx] int64
  int64_t bos = -1;
  int64_t d_in = 0;
  int64_t stop = -1;
  int64_t corpus_tokens = 0;
  // Position in the data: everything a resumed run needs.
  int64_t epoch = 0;
  int64_t cursor = 0;  // next index into order
  uint64_t rng = 0;
  at::Tensor order;    // [W] window order of this epoch
  at::Tensor buffer;   // [cap + slack, D] float32
  int64_t fill = 0;

  int64_t capacity() const { return opt.buffer_tokens; }

  void log(const std::string& s) const {
    if (opt.log) opt.log(s);
  }

  // Acts of the next model batch of windows, BOS positions dropped: [n, D] float32.
  at::Tensor run_windows() {
    if (cursor >= order.size(0)) {
      ++epoch;
      cursor = 0;
      order = permutation(windows.size(0), rng);
      log("activation store: corpus exhausted after " + std::to_string(corpus_tokens) + " tokens; epoch " +
          std::to_string(epoch + 1) + " reuses it in a fresh shuffle");
    }
    const int64_t b = std::min<int64_t>(opt.model_batch, order.size(0) - cursor);
    auto idx = order.narrow(0, cursor, b);
    cursor += b;
    auto tokens = windows.index_select(0, idx);  // [b, ctx]
    HookSet hooks;
    hooks.cache(opt.hook_name);
    RunOptions ro;
    ro.hooks = &hooks;
    ro.stop_at_layer = opt.stop_at_layer ? stop : -1;
    torch::NoGradGuard ng;
    model->forward(tokens, ro);
    auto acts = hooks.get(opt.hook_name);  // [b, ctx, D] (or [b, ctx, H, E])
    acts = acts.reshape({b * tokens.size(1), -1}).to(torch::kFloat);
    if (bos >= 0) {
      auto keep = tokens.reshape({-1}).ne(bos).to(acts.device());
      acts = acts.index({keep});
    }
    return acts;
  }

  void refill() {
    while (fill < capacity()) {
      auto acts = run_windows();
      const int64_t n = acts.size(0);
      if (n == 0) continue;
      buffer.narrow(0, fill, n).copy_(acts);
      fill += n;
    }
    // Mix new rows with what was left, so consecutive batches come from many windows.
    auto perm = permutation(fill, rng).to(buffer.device());
    auto live = buffer.narrow(0, 0, fill);
    live.copy_(live.index_select(0, perm));
  }
};

ActivationStore::ActivationStore(const Model& model, const ActivationStoreOptions& opt) : p_(std::make_unique<Impl>()) {
  Impl& s = *p_;
  s.model = &model;
  s.opt = opt;
  require(opt.batch_tokens > 0 && opt.model_batch > 0, ErrorKind::Arg, "activation store: batch sizes must be positive");
  require(opt.buffer_tokens >= 2 * opt.batch_tokens, ErrorKind::Arg,
          "activation store: the buffer (" + std::to_string(opt.buffer_tokens) + " rows) must hold at least two batches of " +
              std::to_string(opt.batch_tokens));
  s.d_in = sae_site_width(model, opt.hook_name);
  s.stop = hook_stop_layer(opt.hook_name, model.config().n_layers);
  s.windows = tokenize_corpus(model, opt.corpus, opt.ctx_len, opt.text_field);
  const Tokenizer& tok = model.require_tokenizer();
  s.bos = tok.bos_id() >= 0 ? tok.bos_id() : tok.eos_id();
  s.corpus_tokens = s.bos >= 0 ? s.windows.ne(s.bos).sum().item<int64_t>() : s.windows.numel();
  s.rng = opt.seed ^ 0x5AE5AE5AE5AE5AE5ull;
  s.order = permutation(s.windows.size(0), s.rng);
  // Slack for the last model batch that overshoots the capacity.
  s.buffer = torch::empty({opt.buffer_tokens + opt.model_batch * opt.ctx_len, s.d_in},
                          torch::TensorOptions().dtype(torch::kFloat).device(model.device()));
}

ActivationStore::~ActivationStore() = default;
ActivationStore::ActivationStore(ActivationStore&&) noexcept = default;

at::Tensor ActivationStore::next_batch() {
  Impl& s = *p_;
  if (s.fill < s.opt.batch_tokens + s.capacity() / 2) s.refill();
  s.fill -= s.opt.batch_tokens;
  return s.buffer.narrow(0, s.fill, s.opt.batch_tokens).clone();
}

int64_t ActivationStore::d_in() const { return p_->d_in; }
int64_t ActivationStore::corpus_tokens() const { return p_->corpus_tokens; }
int64_t ActivationStore::epoch() const { return p_->epoch; }

std::map<std::string, at::Tensor> ActivationStore::state() const {
  const Impl& s = *p_;
  int64_t rng_bits;
  std::memcpy(&rng_bits, &s.rng, sizeof rng_bits);
  auto scalar = [](int64_t v) { return torch::tensor({v}, torch::kLong); };
  return {{"store.epoch", scalar(s.epoch)},
          {"store.cursor", scalar(s.cursor)},
          {"store.rng", scalar(rng_bits)},
          {"store.n_windows", scalar(s.windows.size(0))},
          {"store.order", s.order.clone()},
          {"store.buffer", s.buffer.narrow(0, 0, s.fill).to(torch::kCPU).clone()}};
}

void ActivationStore::load_state(const std::map<std::string, at::Tensor>& st, const std::string& origin) {
  Impl& s = *p_;
  auto get = [&](const char* k) {
    auto it = st.find(k);
    require(it != st.end(), ErrorKind::Sae, origin + ": checkpoint lacks '" + std::string(k) + "' (not a lumen SAE training checkpoint?)");
    return it->second;
  };
  const int64_t n_windows = get("store.n_windows").item<int64_t>();
  require(n_windows == s.windows.size(0), ErrorKind::Sae,
          origin + ": checkpoint was made on a corpus of " + std::to_string(n_windows) + " windows, this one has " +
              std::to_string(s.windows.size(0)) + " (same --corpus and --ctx-len needed to resume)");
  s.epoch = get("store.epoch").item<int64_t>();
  s.cursor = get("store.cursor").item<int64_t>();
  const int64_t rng_bits = get("store.rng").item<int64_t>();
  std::memcpy(&s.rng, &rng_bits, sizeof rng_bits);
  s.order = get("store.order").to(torch::kLong).clone();
  auto buf = get("store.buffer");
  require(s.order.dim() == 1 && s.order.size(0) == n_windows && buf.dim() == 2 && buf.size(1) == s.d_in &&
              buf.size(0) <= s.buffer.size(0) && s.cursor >= 0 && s.cursor <= n_windows,
          ErrorKind::Sae, origin + ": checkpoint's activation-store state is inconsistent (corrupt file?)");
  s.fill = buf.size(0);
  s.buffer.narrow(0, 0, s.fill).copy_(buf);
}

}  // namespace lumen
