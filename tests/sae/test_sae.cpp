// SAEs: encode math per architecture, foldings, SAELens and .npz formats, splicing into a model
// (exactness, patching, gradients), training (FVU drops, resume is bit-identical), evaluation.
#include <torch/torch.h>
#include <zip.h>

#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "common.h"
#include "lumen/error.h"
#include "lumen/files.h"
#include "lumen/sae.h"
#include "sae/train_step.h"

namespace {

using lumen::Sae;
using lumen::SaeArch;
using lumen::SaeConfig;
using lumen_test::shared_path;

const char* kModel = "models/stories260K/stories260K.bin";
const char* kTrain = "data/tinystories/train.txt";
const char* kHeldout = "data/tinystories/heldout.txt";

lumen::ErrorKind kind_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const lumen::Error& e) {
    return e.kind();
  }
  ADD_FAILURE() << "expected a lumen::Error";
  return lumen::ErrorKind::Runtime;
}

// A 2-in, 3-latent SAE with hand-picked weights: pre = (x - b_dec) W_enc + b_enc.
Sae tiny(SaeArch arch, int64_t k = 0, bool apply_b_dec = true) {
  SaeConfig c;
  c.arch = arch;
  c.d_in = 2;
  c.d_sae = 3;
  c.k = k;
  c.hook_name = "blocks.0.hook_resid_post";
  c.apply_b_dec_to_input = apply_b_dec;
  std::map<std::string, torch::Tensor> t;
  t["W_enc"] = torch::tensor({1.f, 0.f, -1.f, 0.f, 2.f, 1.f}).view({2, 3});
  t["b_enc"] = torch::tensor({0.f, -1.f, 0.5f});
  t["W_dec"] = torch::tensor({1.f, 0.f, 0.f, 1.f, 1.f, 1.f}).view({3, 2});
  t["b_dec"] = torch::tensor({1.f, 1.f});
  t["threshold"] = torch::tensor({0.5f, 0.5f, 2.f});
  return Sae::from_tensors(c, t, "tiny");
}

TEST(SaeMath, EachArchitectureOnAHandExample) {
  // x = (3, 2): x - b_dec = (2, 1); pre = (2, 2 - 1, -2 + 1 + 0.5) = (2, 1, -0.5).
  auto x = torch::tensor({3.f, 2.f}).view({1, 2});
  auto pre = tiny(SaeArch::ReLU).pre_activation(x);
  EXPECT_TRUE(torch::allclose(pre, torch::tensor({2.f, 1.f, -0.5f}).view({1, 3})));
  EXPECT_TRUE(torch::equal(tiny(SaeArch::ReLU).encode(x), torch::tensor({2.f, 1.f, 0.f}).view({1, 3})));
  // JumpReLU with thresholds (0.5, 0.5, 2): both positive ones pass.
  EXPECT_TRUE(torch::equal(tiny(SaeArch::JumpReLU).encode(x), torch::tensor({2.f, 1.f, 0.f}).view({1, 3})));
  // TopK k=1 keeps the largest.
  EXPECT_TRUE(torch::equal(tiny(SaeArch::TopK, 1).encode(x), torch::tensor({2.f, 0.f, 0.f}).view({1, 3})));
  // Without the b_dec shift: pre = (3, 4 - 1, -3 + 2 + 0.5) = (3, 3, -0.5).
  EXPECT_TRUE(torch::allclose(tiny(SaeArch::ReLU, 0, false).pre_activation(x), torch::tensor({3.f, 3.f, -0.5f}).view({1, 3})));
  // decode: f W_dec + b_dec = (2, 1) + (1, 1).
  auto f = torch::tensor({2.f, 1.f, 0.f}).view({1, 3});
  EXPECT_TRUE(torch::equal(tiny(SaeArch::ReLU).decode(f), torch::tensor({3.f, 2.f}).view({1, 2})));

  // BatchTopK: two rows share k*N = 2 slots. Row 2: x = (1, 1) -> pre = (0, -1, 0.5).
  auto x2 = torch::tensor({3.f, 2.f, 1.f, 1.f}).view({2, 2});
  auto bt = tiny(SaeArch::BatchTopK, 1);
  EXPECT_TRUE(torch::equal(bt.encode(x2, true), torch::tensor({2.f, 1.f, 0.f, 0.f, 0.f, 0.f}).view({2, 3})))
      << "the batch's two largest both belong to row 1";
  // At inference it is a JumpReLU with its threshold: 0.5 on latent 2 is not > 2.
  EXPECT_TRUE(torch::equal(bt.encode(x2, false), torch::tensor({2.f, 1.f, 0.f, 0.f, 0.f, 0.f}).view({2, 3})));

  // Scalar activation normalisation: the SAE sees 2x and divides its output by 2.
  auto s = tiny(SaeArch::ReLU);
  s.mutable_config().act_scale = 2.0;
  // 2x - b_dec = (5, 3): pre = (5, 6 - 1, -5 + 3 + 0.5) = (5, 5, -1.5).
  EXPECT_TRUE(torch::allclose(s.pre_activation(x), torch::tensor({5.f, 5.f, -1.5f}).view({1, 3})));
  EXPECT_TRUE(torch::allclose(s.decode(torch::tensor({5.f, 5.f, 0.f}).view({1, 3})), torch::tensor({3.f, 3.f}).view({1, 2})));
}

TEST(SaeMath, FoldingsKeepReconstructionsAndGradientsFlow) {
  auto x = torch::randn({7, 2});
  for (auto arch : {SaeArch::ReLU, SaeArch::JumpReLU}) {
    auto s = tiny(arch);
    s.mutable_config().act_scale = 1.7;
    auto before = s.forward(x);
    auto folded = s.clone();
    folded.fold_activation_scale();
    EXPECT_EQ(folded.config().act_scale, 1.0);
    EXPECT_LT((folded.forward(x) - before).abs().max().item<double>(), 1e-5);
    folded.fold_decoder_norm();
    EXPECT_LT((folded.W_dec.norm(2, 1) - 1).abs().max().item<double>(), 1e-6);
    EXPECT_LT((folded.forward(x) - before).abs().max().item<double>(), 1e-5);
  }
  // TopK with non-unit rows refuses to fold (it would change the selection).
  EXPECT_EQ(kind_of([] { tiny(SaeArch::TopK, 1).fold_decoder_norm(); }), lumen::ErrorKind::Sae);

  auto s = tiny(SaeArch::TopK, 2);
  s.W_enc.requires_grad_(true);
  auto xin = torch::randn({4, 2}, torch::requires_grad());
  auto loss = s.forward(xin).pow(2).sum();
  loss.backward();
  EXPECT_TRUE(s.W_enc.grad().defined());
  EXPECT_TRUE(xin.grad().defined());
}

TEST(SaeFormats, SaeLensRoundTripForEveryArchitecture) {
  const std::string dir = lumen_test::temp_dir("saelens");
  for (auto arch : {SaeArch::ReLU, SaeArch::JumpReLU, SaeArch::TopK, SaeArch::BatchTopK}) {
    SaeConfig c;
    c.arch = arch;
    c.d_in = 8;
    c.d_sae = 16;
    c.k = 3;
    c.hook_name = "blocks.1.hook_resid_post";
    c.act_scale = 1.5;
    c.metadata["model_name"] = "stories260K";
    auto s = Sae::init(c, 7);
    s.b_dec = torch::randn({8});
    s.b_enc = torch::randn({16}) * 0.1;
    if (s.threshold.defined()) s.threshold = torch::rand({16}) * 0.1;
    const std::string out = dir + "/" + lumen::to_string(arch);
    lumen::save_saelens(s, out);
    auto cfg = lumen::read_file(out + "/cfg.json");
    EXPECT_NE(cfg.find("\"d_in\": 8"), std::string::npos) << cfg;
    EXPECT_NE(cfg.find("\"hook_name\": \"blocks.1.hook_resid_post\""), std::string::npos);
    auto r = lumen::load_saelens(out);
    EXPECT_EQ(r.config().arch, arch);
    EXPECT_EQ(r.config().d_in, 8);
    EXPECT_EQ(r.config().d_sae, 16);
    EXPECT_EQ(r.config().hook_name, c.hook_name);
    EXPECT_EQ(r.config().act_scale, 1.0) << "the scale is folded into the weights on save";
    if (arch == SaeArch::TopK || arch == SaeArch::BatchTopK) EXPECT_EQ(r.config().k, 3);
    EXPECT_EQ(r.config().metadata.at("model_name"), "stories260K");
    auto x = torch::randn({5, 8}) * 3;
    EXPECT_LT((r.forward(x) - s.forward(x)).abs().max().item<double>(), 1e-5) << lumen::to_string(arch);
  }
  // BatchTopK is written as the JumpReLU SAELens runs it.
  EXPECT_NE(lumen::read_file(dir + "/batchtopk/cfg.json").find("\"architecture\": \"jumprelu\""), std::string::npos);
}

TEST(SaeFormats, BadSaeLensFoldersAreClearErrors) {
  const std::string dir = lumen_test::temp_dir("saelens_bad");
  SaeConfig c;
  c.d_in = 4;
  c.d_sae = 6;
  c.hook_name = "blocks.0.hook_resid_post";
  lumen::save_saelens(Sae::init(c, 1), dir);
  // cfg.json says d_sae 7 while the weights have 6.
  auto cfg = lumen::read_file(dir + "/cfg.json");
  auto bad = cfg;
  bad.replace(bad.find("\"d_sae\": 6"), 10, "\"d_sae\": 7");
  lumen::write_file_atomic(dir + "/cfg.json", [&](std::ostream& o) { o << bad; });
  try {
    lumen::load_saelens(dir);
    ADD_FAILURE() << "shape contradiction accepted";
  } catch (const lumen::Error& e) {
    EXPECT_EQ(e.kind(), lumen::ErrorKind::Sae);
    EXPECT_NE(std::string(e.what()).find("W_enc"), std::string::npos) << e.what();
  }
  lumen::write_file_atomic(dir + "/cfg.json", [&](std::ostream& o) { o << "{not json"; });
  EXPECT_EQ(kind_of([&] { lumen::load_saelens(dir); }), lumen::ErrorKind::Format);
  EXPECT_EQ(kind_of([&] { lumen::load_saelens(dir + "/nowhere"); }), lumen::ErrorKind::Io);
  EXPECT_EQ(kind_of([&] { lumen::load_sae(dir + "/nowhere"); }), lumen::ErrorKind::Io);
}

// A .npy v1.0 member written by hand (independent of lumen's writer).
std::string npy_bytes(const std::string& descr, const std::string& shape, const void* data, size_t n, bool fortran = false) {
  std::string h = "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") + ", 'shape': " + shape + ", }";
  while ((10 + h.size() + 1) % 16 != 0) h += ' ';
  h += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(h.size() & 0xff);
  out += static_cast<char>(h.size() >> 8);
  return out + h + std::string(static_cast<const char*>(data), n);
}

void zip_members(const std::string& path, const std::vector<std::tuple<std::string, std::string, bool>>& members) {
  int err = 0;
  zip_t* z = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
  ASSERT_NE(z, nullptr);
  for (const auto& [name, bytes, deflate] : members) {
    zip_source_t* src = zip_source_buffer(z, bytes.data(), bytes.size(), 0);
    auto idx = zip_file_add(z, name.c_str(), src, 0);
    ASSERT_GE(idx, 0);
    zip_set_file_compression(z, idx, deflate ? ZIP_CM_DEFLATE : ZIP_CM_STORE, 0);
  }
  ASSERT_EQ(zip_close(z), 0);
}

TEST(SaeFormats, NpzStoredDeflatedAndGemmaScope) {
  const std::string dir = lumen_test::temp_dir("npz");
  const int64_t D = 4, S = 6;
  auto W_enc = torch::randn({D, S}), W_dec = torch::randn({S, D}), b_enc = torch::randn({S}), b_dec = torch::randn({D});
  auto thr = torch::rand({S});
  auto W_enc_t = W_enc.t().contiguous();  // Fortran order stores the transpose's bytes
  std::vector<std::string> bufs{
      npy_bytes("<f4", "(4, 6)", W_enc_t.data_ptr(), W_enc.nbytes(), /*fortran=*/true),
      npy_bytes("<f4", "(6, 4)", W_dec.data_ptr(), W_dec.nbytes()),
      npy_bytes("<f4", "(6,)", b_enc.data_ptr(), b_enc.nbytes()),
      npy_bytes("<f4", "(4,)", b_dec.data_ptr(), b_dec.nbytes()),
      npy_bytes("<f4", "(6,)", thr.data_ptr(), thr.nbytes())};
  const std::string npz = dir + "/params.npz";
  zip_members(npz, {{"W_enc.npy", bufs[0], true}, {"W_dec.npy", bufs[1], false}, {"b_enc.npy", bufs[2], true},
                    {"b_dec.npy", bufs[3], false}, {"threshold.npy", bufs[4], true}});
  auto t = lumen::read_npz(npz);
  ASSERT_EQ(t.size(), 5u);
  EXPECT_TRUE(torch::equal(t["W_enc"], W_enc));
  EXPECT_TRUE(torch::equal(t["W_dec"], W_dec));
  EXPECT_TRUE(torch::equal(t["threshold"], thr));

  auto sae = lumen::load_sae(dir, c10::kCPU, "blocks.3.hook_resid_post");
  EXPECT_EQ(sae.config().arch, SaeArch::JumpReLU);
  EXPECT_FALSE(sae.config().apply_b_dec_to_input);
  auto x = torch::randn({3, D});
  auto pre = torch::matmul(x, W_enc) + b_enc;
  auto want = torch::relu(pre) * (pre > thr).to(torch::kFloat);
  EXPECT_TRUE(torch::allclose(sae.encode(x), want));
  EXPECT_EQ(kind_of([&] { lumen::load_gemma_scope_npz(npz, ""); }), lumen::ErrorKind::Arg) << "hook is required";

  // lumen's own writer, both compressions, round-trips dtypes.
  for (bool deflate : {false, true}) {
    const std::string p = dir + (deflate ? "/d.npz" : "/s.npz");
    auto i64 = torch::arange(10, torch::kLong).view({2, 5});
    lumen::write_npz(p, {{"a", W_dec}, {"b", i64}}, deflate);
    auto r = lumen::read_npz(p);
    EXPECT_TRUE(torch::equal(r["a"], W_dec));
    EXPECT_TRUE(torch::equal(r["b"], i64));
  }
  // Missing arrays, a truncated archive and a non-zip are errors, not crashes.
  zip_members(dir + "/partial.npz", {{"W_enc.npy", bufs[0], false}});
  EXPECT_EQ(kind_of([&] { lumen::load_gemma_scope_npz(dir + "/partial.npz", "blocks.0.hook_resid_post"); }), lumen::ErrorKind::Sae);
  auto whole = lumen::read_file(npz);
  lumen::write_file_atomic(dir + "/trunc.npz", [&](std::ostream& o) { o << whole.substr(0, whole.size() / 2); });
  EXPECT_EQ(kind_of([&] { lumen::read_npz(dir + "/trunc.npz"); }), lumen::ErrorKind::Format);
  lumen::write_file_atomic(dir + "/text.npz", [&](std::ostream& o) { o << "hello"; });
  EXPECT_EQ(kind_of([&] { lumen::read_npz(dir + "/text.npz"); }), lumen::ErrorKind::Format);
}

// ---- with the real model ----------------------------------------------------------------------

lumen::Model stories() { return lumen::Model::load(shared_path(kModel)); }

lumen::RunOptions with_hooks(lumen::HookSet* h) {
  lumen::RunOptions ro;
  ro.hooks = h;
  return ro;
}

torch::Tensor some_tokens(const lumen::Model& m) {
  const auto& tok = m.require_tokenizer();
  auto a = tok.encode("Once upon a time, there was a little dog named Max. Max liked to run in the park.", true);
  auto b = tok.encode("Lily wanted to play with her big red ball, but it was raining outside today.", true);
  a.resize(16);
  b.resize(16);
  auto t = torch::cat({lumen::tokens_tensor(a), lumen::tokens_tensor(b)}, 0);
  return t;
}

Sae random_sae(const lumen::Model& m, int layer, SaeArch arch = SaeArch::TopK, uint64_t seed = 3) {
  SaeConfig c;
  c.arch = arch;
  c.d_in = m.config().d_model;
  c.d_sae = 128;
  c.k = 8;
  c.hook_name = "blocks." + std::to_string(layer) + ".hook_resid_post";
  return Sae::init(c, seed);
}

TEST(SaeAttach, SpliceModesPatchingAndGradients) {
  LUMEN_REQUIRE_SHARED(kModel);
  auto model = stories();
  auto tokens = some_tokens(model);
  torch::NoGradGuard ng;
  auto clean = model.forward(tokens);
  auto sae1 = random_sae(model, 1), sae3 = random_sae(model, 3, SaeArch::ReLU, 5);
  const std::string h1 = sae1.config().hook_name;

  {  // reconstruction + error: bit-identical logits, even with two SAEs; features are cached
    lumen::HookSet hooks;
    lumen::attach(hooks, sae1, lumen::SpliceMode::WithError);
    lumen::attach(hooks, sae3, lumen::SpliceMode::WithError);
    hooks.cache(lumen::sae_hook_acts(h1) + "," + lumen::sae_hook_error(h1) + "," + lumen::sae_hook_recons(h1) + "," + h1);
    auto logits = model.forward(tokens, with_hooks(&hooks));
    EXPECT_TRUE(torch::equal(logits, clean));
    auto acts = hooks.get(lumen::sae_hook_acts(h1));
    EXPECT_EQ(acts.sizes(), (c10::IntArrayRef{2, 16, 128}));
    EXPECT_TRUE(torch::equal((acts > 0).sum(-1), torch::full({2, 16}, 8, torch::kLong))) << "top-8 per position";
    auto x = hooks.get(h1);
    EXPECT_LT((hooks.get(lumen::sae_hook_recons(h1)) + hooks.get(lumen::sae_hook_error(h1)) - x).abs().max().item<double>(), 1e-4);
  }
  {  // replace: the logits change; an SAE in another dtype is cast at the boundary
    lumen::HookSet hooks;
    lumen::attach(hooks, sae1, lumen::SpliceMode::Replace);
    auto logits = model.forward(tokens, with_hooks(&hooks));
    EXPECT_GT((logits - clean).abs().max().item<double>(), 1e-3);
    lumen::HookSet dbl;
    lumen::attach(dbl, sae1.to(c10::kCPU, torch::kDouble), lumen::SpliceMode::Replace);
    auto logits_d = model.forward(tokens, with_hooks(&dbl));
    EXPECT_EQ(logits_d.scalar_type(), torch::kFloat);
    EXPECT_LT((logits_d - logits).abs().max().item<double>(), 1e-3);
    lumen::HookSet dbl_err;
    lumen::attach(dbl_err, sae1.to(c10::kCPU, torch::kDouble), lumen::SpliceMode::WithError);
    EXPECT_TRUE(torch::equal(model.forward(tokens, with_hooks(&dbl_err)), clean));
  }
  {  // patching features: zeroing every feature leaves the error alone
    lumen::HookSet hooks;
    lumen::attach(hooks, sae1, lumen::SpliceMode::WithError);
    hooks.add(lumen::sae_hook_acts(h1), lumen::Intervention::zero());
    hooks.cache(h1 + "," + lumen::sae_hook_error(h1));
    auto logits = model.forward(tokens, with_hooks(&hooks));
    EXPECT_GT((logits - clean).abs().max().item<double>(), 1e-3);
    lumen::HookSet with;
    lumen::attach(with, sae1, lumen::SpliceMode::WithError);
    with.add(lumen::sae_hook_acts(h1), lumen::Intervention::zero());
    with.cache("blocks.2.hook_resid_pre");
    model.forward(tokens, with_hooks(&with));
    // The site became b_dec + error.
    auto want = hooks.get(lumen::sae_hook_error(h1)) + sae1.b_dec;
    EXPECT_LT((with.get("blocks.2.hook_resid_pre") - want).abs().max().item<double>(), 1e-4);
  }
}

TEST(SaeAttach, GradientsReachFeaturesAndTheInput) {
  LUMEN_REQUIRE_SHARED(kModel);
  auto model = stories();
  auto tokens = some_tokens(model);
  auto sae = random_sae(model, 2, SaeArch::ReLU);
  const std::string h = sae.config().hook_name;
  for (auto mode : {lumen::SpliceMode::WithError, lumen::SpliceMode::Replace}) {
    lumen::HookSet hooks;
    lumen::attach(hooks, sae, mode);
    hooks.watch(lumen::sae_hook_acts(h) + "," + lumen::sae_hook_error(h) + ",blocks.0.hook_resid_post");
    auto logits = model.forward(tokens, with_hooks(&hooks));
    auto metric = logits.select(1, 15).select(1, 5).sum();
    auto g = hooks.gradients(metric, true);
    EXPECT_GT(g.at(lumen::sae_hook_acts(h)).abs().sum().item<double>(), 0);
    EXPECT_GT(g.at("blocks.0.hook_resid_post").abs().sum().item<double>(), 0);
    if (mode == lumen::SpliceMode::WithError) {
      EXPECT_GT(g.at(lumen::sae_hook_error(h)).abs().sum().item<double>(), 0);
      // d(metric)/d(error) equals d(metric)/d(site) (out = recons + error), and d/d(acts) is that
      // gradient through the decoder.
      lumen::HookSet plain;
      plain.watch(h);
      auto m2 = model.forward(tokens, with_hooks(&plain)).select(1, 15).select(1, 5).sum();
      auto gs = plain.gradients(m2).at(h);
      EXPECT_LT((g.at(lumen::sae_hook_error(h)) - gs).abs().max().item<double>(), 1e-5);
      auto gf = torch::matmul(gs, sae.W_dec.t());
      EXPECT_LT((g.at(lumen::sae_hook_acts(h)) - gf).abs().max().item<double>(), 1e-5);
      // Upstream gradients are those of the model without the SAE (identity Jacobian).
      lumen::HookSet up;
      up.watch("blocks.0.hook_resid_post");
      auto m3 = model.forward(tokens, with_hooks(&up)).select(1, 15).select(1, 5).sum();
      EXPECT_LT((up.gradients(m3).at("blocks.0.hook_resid_post") - g.at("blocks.0.hook_resid_post")).abs().max().item<double>(), 1e-4);
    }
  }
}

TEST(SaeAttach, FitChecks) {
  LUMEN_REQUIRE_SHARED(kModel);
  auto model = stories();
  auto sae = random_sae(model, 1);
  EXPECT_NO_THROW(lumen::check_sae_fits(sae, model));
  sae.mutable_config().hook_name = "blocks.9.hook_resid_post";
  EXPECT_EQ(kind_of([&] { lumen::check_sae_fits(sae, model); }), lumen::ErrorKind::Sae);
  SaeConfig c;
  c.d_in = 32;
  c.d_sae = 8;
  c.hook_name = "blocks.0.hook_resid_post";
  EXPECT_EQ(kind_of([&] { lumen::check_sae_fits(Sae::init(c, 0), model); }), lumen::ErrorKind::Sae);
  c.hook_name = "blocks.0.mlp.hook_post";  // width d_mlp
  c.d_in = model.config().d_mlp;
  EXPECT_NO_THROW(lumen::check_sae_fits(Sae::init(c, 0), model));
}

// ---- training ---------------------------------------------------------------------------------

lumen::TrainOptions small_run(const std::string& out, SaeArch arch, int64_t tokens) {
  lumen::TrainOptions o;
  o.sae.arch = arch;
  o.sae.d_sae = 256;
  o.sae.k = 8;
  o.sae.hook_name = "blocks.1.hook_resid_post";
  o.data.corpus = shared_path(kTrain);
  o.data.ctx_len = 64;
  o.data.batch_tokens = 512;
  o.data.buffer_tokens = 4096;
  o.data.model_batch = 8;
  o.total_tokens = tokens;
  o.lr = 3e-3;
  o.out_dir = out;
  o.log = [](const std::string&) {};
  o.seed = 11;
  return o;
}

TEST(SaeTrain, TopKAndReluReduceFvuQuickly) {
  LUMEN_REQUIRE_SHARED(kModel);
  LUMEN_REQUIRE_SHARED(kTrain);
  auto model = stories();
  lumen::EvalOptions eo;
  eo.corpus = shared_path(kHeldout);
  eo.tokens = 4000;
  eo.ctx_len = 64;
  // Before training (random directions, b_dec = 0) the reconstruction is worse than the mean.
  auto first = small_run("", SaeArch::TopK, 512);
  first.sae.d_in = model.config().d_model;
  const double fvu_init = lumen::evaluate_sae(model, Sae::init(first.sae, 11), eo).fvu;
  EXPECT_GT(fvu_init, 0.5);
  for (auto arch : {SaeArch::TopK, SaeArch::ReLU, SaeArch::BatchTopK}) {
    auto o = small_run(lumen_test::temp_dir("train"), arch, 512 * 100);
    auto r = lumen::train_sae(model, o);
    EXPECT_TRUE(r.finished);
    auto loaded = lumen::load_saelens(o.out_dir);
    auto ev = lumen::evaluate_sae(model, loaded, eo);
    EXPECT_LT(ev.fvu, std::min(0.4, fvu_init / 2)) << lumen::to_string(arch);
    EXPECT_GT(ev.ce_loss_recovered, 0.5) << lumen::to_string(arch);
    if (arch != SaeArch::ReLU) EXPECT_NEAR(ev.l0, 8, 4) << lumen::to_string(arch);
    EXPECT_GT(ev.ce_loss_ablated, ev.ce_loss_clean);
  }
}

// The training step computes the loss in a cheaper arrangement (TopK codes decoded sparsely, b_dec's
// encoder gradient through one [D]x[D,S] product): its loss and gradients equal the plain dense
// formula's, AuxK included. The gradients are read back from Adam's first moments (m = (1-b1) g).
TEST(SaeTrain, StepMatchesTheDenseFormula) {
  torch::manual_seed(3);
  for (auto arch : {SaeArch::TopK, SaeArch::BatchTopK})
    for (bool with_dead : {false, true}) {
      lumen::TrainOptions opt;
      opt.sae.arch = arch;
      opt.sae.d_in = 64;
      opt.sae.d_sae = 512;
      opt.sae.k = 16;
      opt.sae.hook_name = "blocks.2.hook_resid_post";
      opt.dead_after_tokens = 1000;
      auto x = torch::randn({1024, 64}) * 3 + 0.5;  // [N,D]
      auto st = lumen::sae_train_state(opt.sae, opt, torch::kCPU);
      lumen::sae_train_init(st, opt, x);
      {
        torch::NoGradGuard ng;
        st.sae.b_enc.uniform_(-0.5, 0.5);
      }
      if (with_dead) st.since_fired.narrow(0, 0, 300).fill_(5000);

      Sae ref = st.sae.clone();
      for (auto* p : {&ref.W_enc, &ref.b_enc, &ref.W_dec, &ref.b_dec}) p->requires_grad_(true);
      auto pre = ref.pre_activation(x);  // [N,S]
      auto err = (ref.decode(ref.activate(pre, true)) - x) * ref.config().act_scale;
      auto loss = err.pow(2).sum(-1).mean();
      auto dead = st.since_fired >= opt.dead_after_tokens;
      const int64_t n_dead = dead.sum().item<int64_t>();
      if (n_dead > 0) {
        const int64_t ka = std::min<int64_t>(opt.sae.d_in / 2, n_dead);
        auto top = torch::topk(pre.masked_fill(dead.logical_not().unsqueeze(0), -INFINITY), ka, -1);
        auto f_aux = torch::zeros_like(pre).scatter(-1, std::get<1>(top), torch::relu(std::get<0>(top)));
        auto e = -err.detach();
        auto aux = (torch::matmul(f_aux, ref.W_dec) - e).pow(2).sum(-1).mean() / e.pow(2).sum(-1).mean();
        loss = loss + opt.aux_k_coeff * std::min(1.0, static_cast<double>(n_dead) / ka) * aux;
      }
      auto g = torch::autograd::grad({loss}, ref.parameters());
      g[2] = g[2] - (g[2] * ref.W_dec).sum(1, true) * ref.W_dec;  // the step's radial projection

      lumen::SaeStepStats acc;
      lumen::sae_train_step(st, opt, 100, x, acc, [](const std::string&) {});
      const std::string what = std::string(lumen::to_string(arch)) + (with_dead ? ", dead latents" : "");
      EXPECT_NEAR(acc.loss, loss.item<double>(), 1e-5 * loss.item<double>()) << what;
      for (size_t i = 0; i < 4; ++i) {
        auto step_g = st.adam.m[i] / (1 - opt.adam_beta1);
        EXPECT_LT((step_g - g[i]).abs().max().item<double>(), 1e-5 * (1 + g[i].abs().max().item<double>())) << what << " param " << i;
      }
    }
}

TEST(SaeTrain, ResumeEqualsUninterruptedBitForBit) {
  LUMEN_REQUIRE_SHARED(kModel);
  LUMEN_REQUIRE_SHARED(kTrain);
  auto model = stories();
  for (auto arch : {SaeArch::TopK, SaeArch::ReLU, SaeArch::BatchTopK}) {
    const int64_t tokens = 512 * 40;
    auto whole = small_run(lumen_test::temp_dir("whole"), arch, tokens);
    whole.dead_after_tokens = 2048;  // so AuxK / revival take part
    auto a = lumen::train_sae(model, whole);

    auto part = whole;
    part.out_dir = lumen_test::temp_dir("part");
    part.checkpoint_every = 7;
    part.stop_after_steps = 23;  // not on a checkpoint boundary: the stop itself checkpoints
    auto b1 = lumen::train_sae(model, part);
    EXPECT_FALSE(b1.finished);
    EXPECT_EQ(b1.steps, 23);
    // A stale temp file from an interrupted write is ignored.
    lumen::write_file_atomic(part.out_dir + "/checkpoints/state.safetensors.tmp.999999", [](std::ostream& o) { o << "junk"; });
    part.stop_after_steps = -1;
    part.resume = true;
    auto b2 = lumen::train_sae(model, part);
    EXPECT_TRUE(b2.finished);
    EXPECT_EQ(b2.steps, a.steps);
    for (size_t i = 0; i < 4; ++i)
      EXPECT_TRUE(torch::equal(a.sae.parameters()[i], b2.sae.parameters()[i])) << lumen::to_string(arch) << " param " << i;
    if (arch == SaeArch::BatchTopK) EXPECT_TRUE(torch::equal(a.sae.threshold, b2.sae.threshold));

    // A corrupt checkpoint is a clear error on resume.
    const std::string ck = part.out_dir + "/checkpoints/state.safetensors";
    auto bytes = lumen::read_file(ck);
    lumen::write_file_atomic(ck, [&](std::ostream& o) { o << bytes.substr(0, bytes.size() / 3); });
    try {
      lumen::train_sae(model, part);
      ADD_FAILURE() << "corrupt checkpoint accepted";
    } catch (const lumen::Error& e) {
      EXPECT_EQ(e.kind(), lumen::ErrorKind::Sae);
      EXPECT_NE(std::string(e.what()).find("checkpoint"), std::string::npos) << e.what();
    }
    // A checkpoint from different settings is refused.
    lumen::write_file_atomic(ck, [&](std::ostream& o) { o << bytes; });
    auto other = part;
    other.lr = 1e-3;
    EXPECT_EQ(kind_of([&] { lumen::train_sae(model, other); }), lumen::ErrorKind::Sae);
  }
}

TEST(SaeTrain, BadInputs) {
  LUMEN_REQUIRE_SHARED(kModel);
  auto model = stories();
  auto o = small_run("", SaeArch::TopK, 512 * 4);
  auto bad_hook = o;
  bad_hook.sae.hook_name = "blocks.7.hook_resid_post";
  EXPECT_EQ(kind_of([&] { lumen::train_sae(model, bad_hook); }), lumen::ErrorKind::Sae);
  auto no_corpus = o;
  no_corpus.data.corpus = "/nonexistent/corpus.txt";
  EXPECT_EQ(kind_of([&] { lumen::train_sae(model, no_corpus); }), lumen::ErrorKind::Io);
  auto bad_k = o;
  bad_k.sae.k = 0;
  EXPECT_EQ(kind_of([&] { lumen::train_sae(model, bad_k); }), lumen::ErrorKind::Arg);
  auto jump = o;
  jump.sae.arch = SaeArch::JumpReLU;
  EXPECT_EQ(kind_of([&] { lumen::train_sae(model, jump); }), lumen::ErrorKind::Arg);
  // JSONL without the text field.
  const std::string dir = lumen_test::temp_dir("jsonl");
  lumen::write_file_atomic(dir + "/c.jsonl", [](std::ostream& out) { out << "{\"body\": \"Once upon a time\"}\n"; });
  auto js = o;
  js.data.corpus = dir + "/c.jsonl";
  EXPECT_EQ(kind_of([&] { lumen::train_sae(model, js); }), lumen::ErrorKind::Format);
}

TEST(SaeTrain, JsonlCorpusAndBosDropping) {
  LUMEN_REQUIRE_SHARED(kModel);
  auto model = stories();
  const std::string dir = lumen_test::temp_dir("jsonl2");
  lumen::write_file_atomic(dir + "/c.jsonl", [](std::ostream& out) {
    for (int i = 0; i < 20; ++i) out << "{\"text\": \"Once upon a time there was a cat. The cat was happy and liked to play.\"}\n";
  });
  auto w = lumen::tokenize_corpus(model, dir + "/c.jsonl", 32);
  ASSERT_GT(w.size(0), 3);
  const int64_t bos = model.require_tokenizer().bos_id();
  EXPECT_TRUE(torch::equal(w.select(1, 0), torch::full({w.size(0)}, bos, torch::kLong))) << "every window starts with BOS";
  lumen::ActivationStoreOptions so;
  so.corpus = dir + "/c.jsonl";
  so.hook_name = "blocks.0.hook_resid_post";
  so.ctx_len = 32;
  so.batch_tokens = 64;
  so.buffer_tokens = 256;
  std::vector<std::string> logs;
  so.log = [&](const std::string& s) { logs.push_back(s); };
  lumen::ActivationStore store(model, so);
  for (int i = 0; i < 40; ++i) {
    auto b = store.next_batch();
    ASSERT_EQ(b.sizes(), (c10::IntArrayRef{64, 64}));
  }
  EXPECT_GE(store.epoch(), 1) << "a short corpus starts new epochs";
  ASSERT_FALSE(logs.empty());
  EXPECT_NE(logs[0].find("epoch"), std::string::npos);
}

// ---- the CLI ----------------------------------------------------------------------------------

using lumen_test::CliRun;
using lumen_test::run_cli;

TEST(SaeCli, TrainThenEvalJsonAndOneLineErrors) {
  LUMEN_REQUIRE_SHARED(kModel);
  LUMEN_REQUIRE_SHARED(kTrain);
  const std::string model = shared_path(kModel), out = lumen_test::temp_dir("cli_sae") + "/sae";
  auto t = run_cli("sae train " + model + " --hook blocks.0.hook_resid_post --arch topk --k 8 --d-sae 64 --tokens 8192 --batch 512"
                   " --buffer 2048 --ctx-len 64 --corpus " + shared_path(kTrain) + " --out " + out + " --log-every 4");
  ASSERT_EQ(t.code, 0) << t.err;
  EXPECT_NE(t.err.find("tok/s"), std::string::npos) << t.err;
  EXPECT_NE(t.err.find("FVU"), std::string::npos) << t.err;
  auto e = run_cli("sae eval " + model + " --sae " + out + " --corpus " + shared_path(kHeldout) + " --tokens 2000 --ctx-len 64 --json");
  ASSERT_EQ(e.code, 0) << e.err;
  for (const char* key : {"l0", "mse", "fvu", "ce_loss_clean", "ce_loss_spliced", "ce_loss_ablated", "ce_loss_recovered",
                          "dead_fraction", "dense_fraction"})
    EXPECT_NE(e.out.find(std::string("\"") + key + "\""), std::string::npos) << key << " in " << e.out;
  auto bad = run_cli("sae eval " + model + " --sae " + out + "/nowhere --corpus " + shared_path(kHeldout));
  EXPECT_EQ(bad.code, 1);
  EXPECT_EQ(bad.err.rfind("lumen: ", 0), 0u) << bad.err;
  EXPECT_EQ(std::count(bad.err.begin(), bad.err.end(), '\n'), 1) << bad.err;
}

}  // namespace
