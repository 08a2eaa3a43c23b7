// Flags: rules label known sentences, HF export round trip, a few training steps lower the aux
// loss and resume bit-identically, steering forces the dims, eval JSON carries the contract keys.
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "common.h"
#include "lumen/error.h"
#include "lumen/files.h"
#include "lumen/flags.h"

namespace {

const char* kModel = "models/stories260K/stories260K.bin";

std::vector<std::string> some_stories(int64_t n) {
  return lumen::read_texts(lumen_test::shared_path("data/tinystories/train.txt"), n);
}

TEST(FlagsRules, LabelKnownSentences) {
  auto rules = lumen::default_tinystories_rules();
  auto c = lumen::label_texts({"The puppy ran to the park. It was sunny!", "Tom was SAD because his Kitten left.",
                               "Catherine ate a cake."},
                              rules);
  auto has = [&](size_t i, const std::string& n) {
    for (size_t k = 0; k < c.concepts.size(); ++k)
      if (c.concepts[k] == n) return c.items[i].labels[k] == 1;
    ADD_FAILURE() << "no concept " << n;
    return false;
  };
  EXPECT_TRUE(has(0, "dog"));
  EXPECT_TRUE(has(0, "park"));
  EXPECT_TRUE(has(0, "sun"));
  EXPECT_FALSE(has(0, "cat"));
  EXPECT_TRUE(has(1, "sad"));
  EXPECT_TRUE(has(1, "cat"));
  EXPECT_FALSE(has(2, "cat"));  // whole words only: "Catherine" is not a cat
}

TEST(FlagsRules, RulesFileAndJsonlRoundTrip) {
  const std::string dir = lumen_test::temp_dir("flags_rules");
  const std::string rp = dir + "/rules.txt";
  lumen::write_file_atomic(rp, [](std::ostream& o) { o << "# test\nfrog: frog frogs\nmoon: moon\n"; });
  auto rules = lumen::load_rules(rp);
  ASSERT_EQ(rules.size(), 2u);
  auto c = lumen::label_texts({"Two frogs sang.", "The moon is up."}, rules);
  lumen::save_concepts_jsonl(dir + "/c.jsonl", c);
  auto back = lumen::load_concepts_jsonl(dir + "/c.jsonl");
  ASSERT_EQ(back.concepts, c.concepts);
  ASSERT_EQ(back.items.size(), 2u);
  EXPECT_EQ(back.items[0].labels, (std::vector<uint8_t>{1, 0}));
  EXPECT_EQ(back.items[1].labels, (std::vector<uint8_t>{0, 1}));
}

TEST(FlagsExport, Stories260KRoundTripSameLogits) {
  LUMEN_REQUIRE_SHARED(kModel);
  torch::NoGradGuard ng;
  auto a = lumen::Model::load(lumen_test::shared_path(kModel));
  const std::string dir = lumen_test::temp_dir("flags_export");
  lumen::save_hf_checkpoint(a, dir);
  auto b = lumen::Model::load(dir);
  EXPECT_EQ(b.config().family, "llama");
  ASSERT_NE(b.tokenizer(), nullptr);
  auto ids = a.require_tokenizer().encode("Once upon a time, there was a little dog.", true);
  EXPECT_EQ(ids, b.require_tokenizer().encode("Once upon a time, there was a little dog.", true));
  auto t = lumen::tokens_tensor(ids);
  auto la = a.forward(t), lb = b.forward(t);
  EXPECT_LT((la - lb).abs().max().item<double>(), 1e-4);
}

TEST(FlagsLabels, PrefixScopeTurnsOnAtTheFirstMention) {
  LUMEN_REQUIRE_SHARED(kModel);
  auto model = lumen::Model::load(lumen_test::shared_path(kModel));
  const auto& tok = model.require_tokenizer();
  auto rules = lumen::default_tinystories_rules();
  auto corpus = lumen::label_texts({"Tom went out to play. He saw a dog in the park. The dog ran to the park."}, rules);
  auto w = lumen::make_windows(model, corpus, rules, 64);
  ASSERT_EQ(w.tokens.size(), 1u);
  ASSERT_TRUE(w.exact_positions);
  const int64_t dog = 0, park = 9, cat = 1;
  ASSERT_EQ(corpus.concepts[dog], "dog");
  ASSERT_EQ(corpus.concepts[park], "park");
  const int64_t T = w.tokens[0].size(0), K = corpus.concepts.size();
  std::vector<int32_t> ids;
  for (int64_t t = 0; t < T; ++t) ids.push_back(static_cast<int32_t>(w.tokens[0][t].item<int64_t>()));
  for (int64_t c : {dog, park}) {
    const int64_t f = w.first[0][c];
    ASSERT_GT(f, 0) << corpus.concepts[c];
    // The prefix through token f mentions the concept; the one before it does not.
    EXPECT_TRUE(lumen::rule_matches(rules[c], tok.decode(std::vector<int32_t>(ids.begin(), ids.begin() + f + 1))));
    EXPECT_FALSE(lumen::rule_matches(rules[c], tok.decode(std::vector<int32_t>(ids.begin(), ids.begin() + f))));
  }
  EXPECT_LT(w.first[0][dog], w.first[0][park]);
  EXPECT_EQ(w.first[0][cat], -1);
  EXPECT_EQ(w.start[0][cat], -1);
  // The mention's span: tokens start..first spell it, start+1..first do not.
  auto spelled = [&](int64_t c, int64_t from) {
    return lumen::rule_matches(rules[c], tok.decode(std::vector<int32_t>(ids.begin() + from, ids.begin() + w.first[0][c] + 1)));
  };
  for (int64_t c : {dog, park}) {
    const int64_t s = w.start[0][c];
    ASSERT_GE(s, 1) << corpus.concepts[c];
    ASSERT_LE(s, w.first[0][c]) << corpus.concepts[c];
    EXPECT_TRUE(spelled(c, s)) << corpus.concepts[c];
    if (s < w.first[0][c]) EXPECT_FALSE(spelled(c, s + 1)) << corpus.concepts[c];
  }
  // Mention weights: prediction t scores token t+1, so the span's tokens are weighted one to the left.
  auto mw = lumen::mention_weights(w, {0}, T, K, 5.0);
  ASSERT_EQ(mw.sizes(), (std::vector<int64_t>{1, T - 1}));
  for (int64_t t = 0; t + 1 < T; ++t) {
    bool in = false;
    for (int64_t c : {dog, park}) in = in || (t + 1 >= w.start[0][c] && t + 1 <= w.first[0][c]);
    EXPECT_EQ(mw[0][t].item<float>(), in ? 5.f : 1.f) << t;
  }
  auto pre = lumen::flag_labels(w, {0}, T, K, lumen::FlagScope::Prefix);
  auto win = lumen::flag_labels(w, {0}, T, K, lumen::FlagScope::Window);
  for (int64_t t = 0; t < T; ++t) {
    EXPECT_EQ(pre[0][t][dog].item<float>(), t >= w.first[0][dog] ? 1.f : 0.f) << t;
    EXPECT_EQ(win[0][t][dog].item<float>(), 1.f) << t;
    EXPECT_EQ(pre[0][t][cat].item<float>(), 0.f) << t;
    EXPECT_EQ(win[0][t][cat].item<float>(), 0.f) << t;
  }
  // Given labels (JSONL) carry no positions: the prefix scope refuses them.
  lumen::ConceptCorpus given;
  given.concepts = {"dog"};
  given.items = {{"Tom saw a dog in the park and ran home.", {1}}};
  auto gw = lumen::make_windows(model, given, {}, 64);
  EXPECT_THROW(lumen::flag_labels(gw, {0}, 8, 1, lumen::FlagScope::Prefix), lumen::Error);
  EXPECT_THROW(lumen::mention_weights(gw, {0}, 8, 1, 5.0), lumen::Error);
  EXPECT_EQ(lumen::flag_labels(gw, {0}, 8, 1, lumen::FlagScope::Window).sum().item<float>(), 8.f);
  EXPECT_THROW(lumen::parse_flag_scope("future"), lumen::Error);
}

TEST(FlagsLabels, ReplaceDimsKeepsTheOthersAndChecksShapes) {
  auto x = torch::randn({2, 5, 8});
  auto idx = torch::tensor(std::vector<int64_t>{1, 6}, torch::kLong);
  auto per_row = torch::tensor(std::vector<float>{3, 4, 5, 6}).view({2, 1, 2});
  auto y = lumen::replace_dims(x, idx, per_row);
  EXPECT_TRUE(torch::equal(y.select(2, 0), x.select(2, 0)));
  EXPECT_TRUE(torch::equal(y.select(2, 7), x.select(2, 7)));
  EXPECT_EQ(y[1][3][6].item<float>(), 6.f);
  EXPECT_EQ(y[0][0][1].item<float>(), 3.f);
  auto per_pos = torch::arange(20, torch::kFloat).view({2, 5, 2});
  auto z = lumen::replace_dims(x, idx, per_pos);
  EXPECT_EQ(z[1][4][1].item<float>(), 18.f);
  EXPECT_EQ(z[1][4][6].item<float>(), 19.f);
  EXPECT_THROW(lumen::replace_dims(x, idx, torch::zeros({2, 3, 2})), lumen::Error);
  EXPECT_THROW(lumen::replace_dims(x, idx, torch::zeros({2, 1, 3})), lumen::Error);
  // NaN keeps the model's own value in that flag dim (on-only supply).
  auto keep = per_row.clone();
  keep[1][0][1] = std::nan("");
  auto k = lumen::replace_dims(x, idx, keep);
  EXPECT_EQ(k[1][2][6].item<float>(), x[1][2][6].item<float>());
  EXPECT_EQ(k[1][2][1].item<float>(), 5.f);
}

TEST(FlagsLabels, SuppliedFlagsFollowTheSpecsSupplyMode) {
  lumen::FlagSpec spec;
  spec.on_value = 3.0;
  auto lab = torch::tensor(std::vector<float>{1, 0, 0, 1}).view({1, 2, 2});
  spec.supply = lumen::FlagSupply::All;
  EXPECT_TRUE(torch::equal(lumen::supplied_flags(spec, lab), lab * 3.0));
  spec.supply = lumen::FlagSupply::OnOnly;
  auto v = lumen::supplied_flags(spec, lab);
  EXPECT_EQ(v[0][0][0].item<float>(), 3.f);
  EXPECT_TRUE(std::isnan(v[0][0][1].item<float>()));
  EXPECT_EQ(lumen::parse_flag_supply(lumen::flag_supply_name(lumen::FlagSupply::OnOnly)), lumen::FlagSupply::OnOnly);
  EXPECT_THROW(lumen::parse_flag_supply("some"), lumen::Error);
}

// --linear-write: same forward; a loss on the flag dims reaches only the rows that write them.
void check_linear_write(const std::string& rel, const std::vector<int>& ids, int64_t L) {
  SCOPED_TRACE(rel);
  auto model = lumen::Model::load(lumen_test::shared_path(rel));
  auto dims = torch::tensor(std::vector<int64_t>{3, 17, 30}, torch::kLong);
  auto t = lumen::tokens_tensor(ids);
  auto resid = [&](lumen::HookSet& hooks) {
    at::Tensor r;
    hooks.hook("blocks." + std::to_string(L) + ".hook_resid_post", [&](const at::Tensor& x, const lumen::HookContext&) {
      r = x;
      return at::Tensor();
    });
    lumen::RunOptions ro;
    ro.hooks = &hooks;
    ro.stop_at_layer = L + 1;
    model.forward(t, ro);
    return r;
  };
  lumen::HookSet plain, linear;
  lumen::add_linear_write_hooks(model, L, dims, linear);  // before set_requires_grad: weights are looked up per call
  model.set_requires_grad(true);
  auto r0 = resid(plain);
  auto r1 = resid(linear);
  EXPECT_LT((r0 - r1).abs().max().item<double>(), 1e-5);
  r1.index_select(2, dims).pow(2).sum().backward();
  auto p = model.named_parameters();
  auto g = [&](const std::string& n) {
    auto gr = p.at(n).grad();
    return gr.defined() ? gr : torch::zeros_like(p.at(n));
  };
  auto rest = [&](const at::Tensor& gr, int64_t dim) {  // |grad| outside the flag rows / columns
    auto keep = torch::ones({gr.size(dim)}, torch::kBool);
    keep.index_fill_(0, dims, false);
    return gr.transpose(0, dim).index({keep}).abs().max().item<double>();
  };
  for (int64_t l = 0; l <= L; ++l) {
    const std::string b = "blocks." + std::to_string(l) + ".";
    for (const char* w : {"attn.W_O", "mlp.W_out"}) {
      EXPECT_GT(g(b + w).index_select(0, dims).abs().max().item<double>(), 0) << b + w;
      EXPECT_EQ(rest(g(b + w), 0), 0) << b + w;
    }
    for (const char* w : {"attn.W_Q", "attn.W_K", "attn.W_V", "mlp.W_in", "mlp.W_gate", "ln1.w", "attn.b_Q"})
      if (p.count(b + w)) EXPECT_EQ(g(b + w).abs().max().item<double>(), 0) << b + w;
  }
  EXPECT_GT(g("embed.W_E").index_select(1, dims).abs().max().item<double>(), 0);
  EXPECT_EQ(rest(g("embed.W_E"), 1), 0);
  // Without the hooks the same loss reaches the features upstream.
  for (auto& kv : p) kv.second.mutable_grad() = at::Tensor();
  resid(plain).index_select(2, dims).pow(2).sum().backward();
  EXPECT_GT(g("blocks.0.attn.W_Q").abs().max().item<double>(), 0);
  model.set_requires_grad(false);
}

TEST(FlagsTrain, LinearWriteKeepsValuesAndTrainsOnlyTheFlagRows) {
  LUMEN_REQUIRE_SHARED(kModel);
  LUMEN_REQUIRE_SHARED("testdata/models/gpt2_a");
  check_linear_write(kModel, {1, 403, 407, 261, 378, 296}, 2);
  check_linear_write("testdata/models/gpt2_a", {5, 17, 42, 9, 77, 3}, 1);  // biases, Conv1D weights
  LUMEN_REQUIRE_SHARED("testdata/models/gemma2_a");
  auto gemma = lumen::Model::load(lumen_test::shared_path("testdata/models/gemma2_a"));
  lumen::HookSet h;
  EXPECT_THROW(lumen::add_linear_write_hooks(gemma, 0, torch::tensor(std::vector<int64_t>{1}, torch::kLong), h),
               lumen::Error);  // a norm after each block's output: the write is not linear
}

lumen::FlagTrainOptions tiny_opts(const std::string& out) {
  lumen::FlagTrainOptions o;
  o.layer = 2;
  o.n_dims = 4;
  o.steps_write = 6;
  o.steps_rely = 4;
  o.batch = 4;
  o.seq_len = 48;
  o.lr = 2e-3;
  o.out_dir = out;
  o.checkpoint_every = 0;
  o.log_every = 0;
  o.seed = 3;
  o.log = [](const std::string&) {};
  return o;
}

TEST(FlagsTrain, AuxFallsAndResumeIsBitIdentical) {
  LUMEN_REQUIRE_SHARED(kModel);
  const std::string path = lumen_test::shared_path(kModel);
  auto rules = lumen::default_tinystories_rules();
  auto corpus = lumen::label_texts(some_stories(200), rules);

  const std::string d1 = lumen_test::temp_dir("flags_full");
  auto m1 = lumen::Model::load(path);
  auto r1 = lumen::train_flags(m1, path, corpus, rules, tiny_opts(d1));
  EXPECT_TRUE(r1.finished);
  EXPECT_LT(r1.last_aux, r1.first_aux);

  const std::string d2 = lumen_test::temp_dir("flags_resume");
  auto o2 = tiny_opts(d2);
  o2.stop_after_steps = 7;  // inside stage 2
  auto m2 = lumen::Model::load(path);
  auto r2a = lumen::train_flags(m2, path, corpus, rules, o2);
  EXPECT_FALSE(r2a.finished);
  {  // a checkpoint written with other settings is refused, --on-scale included
    auto other = o2;
    other.stop_after_steps = -1;
    other.resume = true;
    other.on_scale = 2.0;
    auto mo = lumen::Model::load(path);
    EXPECT_THROW(lumen::train_flags(mo, path, corpus, rules, other), lumen::Error);
  }
  o2.stop_after_steps = -1;
  o2.resume = true;
  auto m3 = lumen::Model::load(path);  // a fresh process: starts from the base weights
  auto r2b = lumen::train_flags(m3, path, corpus, rules, o2);
  EXPECT_TRUE(r2b.finished);
  EXPECT_EQ(r2b.spec.dims, r1.spec.dims);
  auto p1 = m1.named_parameters(), p3 = m3.named_parameters();
  for (auto& kv : p1) EXPECT_TRUE(torch::equal(kv.second, p3.at(kv.first))) << kv.first;

  // The prefix scope with noisy, on-only supply and a mention weight resumes bit-identically too
  // (noise is seeded per step).
  {
    const std::string d3 = lumen_test::temp_dir("flags_prefix_full"), d4 = lumen_test::temp_dir("flags_prefix_resume");
    auto o3 = tiny_opts(d3), o4 = tiny_opts(d4);
    for (auto* o : {&o3, &o4}) {
      o->scope = lumen::FlagScope::Prefix;
      o->supply_noise = 0.2;
      o->supply_on_only = true;
      o->mention_weight = 4.0;
      o->steps_write = 3;
      o->steps_rely = 4;
    }
    auto ma = lumen::Model::load(path);
    lumen::train_flags(ma, path, corpus, rules, o3);
    {  // the mention weight is in effect (stage 2 takes other steps without it) and recorded
      auto o0 = o3;
      o0.out_dir = lumen_test::temp_dir("flags_prefix_plain");
      o0.mention_weight = 1.0;
      auto m0 = lumen::Model::load(path);
      lumen::train_flags(m0, path, corpus, rules, o0);
      EXPECT_FALSE(torch::equal(m0.named_parameters().at("blocks.4.mlp.W_out"), ma.named_parameters().at("blocks.4.mlp.W_out")));
      EXPECT_EQ(nlohmann::json::parse(lumen::load_flag_spec(d3).training)["mention_weight"].get<double>(), 4.0);
      EXPECT_FALSE(nlohmann::json::parse(lumen::load_flag_spec(o0.out_dir).training).contains("mention_weight"));
      // JSONL labels carry no positions: refused before any training.
      lumen::ConceptCorpus given;
      given.concepts = {"dog"};
      given.items = {{"Tom saw a dog in the park and ran home with it.", {1}}};
      auto mg = lumen::Model::load(path);
      EXPECT_THROW(lumen::train_flags(mg, path, given, {}, o3), lumen::Error);
    }
    o4.stop_after_steps = 5;
    auto mb = lumen::Model::load(path);
    lumen::train_flags(mb, path, corpus, rules, o4);
    o4.stop_after_steps = -1;
    o4.resume = true;
    auto mc = lumen::Model::load(path);
    lumen::train_flags(mc, path, corpus, rules, o4);
    auto pa = ma.named_parameters(), pc = mc.named_parameters();
    for (auto& kv : pa) EXPECT_TRUE(torch::equal(kv.second, pc.at(kv.first))) << kv.first;
    EXPECT_EQ(lumen::load_flag_spec(d3).scope, lumen::FlagScope::Prefix);
    EXPECT_EQ(lumen::load_flag_spec(d3).supply, lumen::FlagSupply::OnOnly);
  }

  // The result is an ordinary checkpoint with flags.json; steering forces the dims.
  auto spec = lumen::load_flag_spec(d1);
  EXPECT_EQ(spec.dims.size(), 4u);
  EXPECT_EQ(spec.supply, lumen::FlagSupply::All);
  {  // flags.json records how it was trained
    auto tr = nlohmann::json::parse(spec.training);
    EXPECT_EQ(tr["dims"].get<int64_t>(), 4);
    EXPECT_EQ(tr["supply"].get<std::string>(), "all");
    EXPECT_TRUE(tr.contains("seed") && tr.contains("steps_rely") && tr.contains("weight_decay"));
  }
  auto fm = lumen::Model::load(d1);
  {
    torch::NoGradGuard ng;
    lumen::HookSet hs;
    hs.add(spec.hook_name(), lumen::force_dims({spec.dims[0], spec.dims[1]}, {spec.on_value, 0.0}, 64));
    hs.cache("blocks.3.hook_resid_pre");
    lumen::RunOptions ro;
    ro.hooks = &hs;
    fm.forward(lumen::tokens_tensor(fm.require_tokenizer().encode("Once upon a time", true)), ro);
    auto x = hs.get("blocks.3.hook_resid_pre");  // == resid_post of layer 2, after the intervention
    EXPECT_TRUE(torch::allclose(x.select(2, spec.dims[0]), torch::full_like(x.select(2, 0), spec.on_value)));
    EXPECT_TRUE(torch::allclose(x.select(2, spec.dims[1]), torch::zeros_like(x.select(2, 0))));
  }
  lumen::SteerOptions so;
  so.set = {{spec.concepts[0], 1.0}};
  so.max_new_tokens = 8;
  auto texts = lumen::steer(fm, spec, "Once upon a time", so);
  ASSERT_EQ(texts.size(), 1u);
  EXPECT_FALSE(texts[0].empty());

  // Eval JSON contract (tiny settings).
  lumen::FlagEvalOptions eo;
  eo.samples = 2;
  eo.max_new_tokens = 8;
  eo.max_texts = 40;
  eo.log = [](const std::string&) {};
  eo.control = d2;  // any flag-free-loss fine-tune works as the control; here the resumed run
  eo.probe_corpus = lumen_test::shared_path("data/tinystories/train.txt");
  eo.probe_texts = 60;
  eo.steer_scale = 2.0;
  eo.probe_supplied = true;
  auto held = lumen::label_texts(lumen::read_texts(lumen_test::shared_path("data/tinystories/heldout.txt"), 40), rules);
  auto ev = lumen::evaluate_flags(d1, held, eo);
  auto j = nlohmann::json::parse(ev.to_json());
  ASSERT_TRUE(j.contains("ppl_base") && j.contains("ppl_flagged") && j.contains("concepts"));
  EXPECT_GT(j["ppl_base"].get<double>(), 1.0);
  EXPECT_GT(j["ppl_control"].get<double>(), 1.0);
  EXPECT_EQ(j["steer_scale"].get<double>(), 2.0);
  EXPECT_GT(j["base_gen_ce"].get<double>(), 0.0);
  for (const auto& c : spec.concepts) {
    ASSERT_TRUE(j["concepts"].contains(c)) << c;
    for (const char* key : {"readout_accuracy", "steer_success", "base_rate", "flag_off_rate", "override_success",
                            "probe_accuracy_before", "probe_accuracy_after"})
      EXPECT_TRUE(j["concepts"][c].contains(key)) << c << "." << key;
    EXPECT_GT(j["concepts"][c]["steer_ce"].get<double>(), 0.0) << c;
    EXPECT_TRUE(j["concepts"][c].contains("probe_accuracy_control")) << c;
    // Erosion probes: every view, the flag layer's last position first and mirrored in probe_accuracy_*.
    const auto& probes = j["concepts"][c]["probes"];
    EXPECT_EQ(probes.size(), j["probe_sites"].size()) << c;
    const auto& first = probes[j["probe_sites"][0].get<std::string>()];
    EXPECT_EQ(first["after"], j["concepts"][c]["probe_accuracy_after"]) << c;
  }
  // Flag layer and last layer at two readouts each, plus what the later blocks wrote.
  ASSERT_EQ(j["probe_sites"].size(), 6u);
  EXPECT_EQ(j["probe_sites"][0].get<std::string>(), spec.hook_name() + "@last");
  EXPECT_TRUE(j["probe_supplied"].get<bool>());
  EXPECT_EQ(j["supply"].get<std::string>(), "all");
  for (const auto& [view, sh] : j["probe_shifts"].items()) {
    if (sh["mean"].is_null()) continue;
    EXPECT_LE(sh["lo"].get<double>(), sh["mean"].get<double>() + 1e-12) << view;
    EXPECT_GE(sh["hi"].get<double>(), sh["mean"].get<double>() - 1e-12) << view;
    EXPECT_EQ(sh["against"].get<std::string>(), "control") << view;
  }

  // Probes tested on the probe corpus's next texts: the flagged model against itself as the control
  // shifts nothing, exactly, in every view and every bootstrap draw.
  const auto train_texts = lumen::read_texts(eo.probe_corpus, 5);
  const auto skipped = lumen::read_texts(eo.probe_corpus, 3, 2);
  ASSERT_EQ(skipped.size(), 3u);
  EXPECT_EQ(skipped[0], train_texts[2]);
  EXPECT_EQ(skipped[2], train_texts[4]);
  eo.samples = 0;
  eo.control = d1;
  eo.probe_supplied = false;
  eo.probe_flags = "off";  // every model's flag dims forced off: still the same model on both sides
  eo.probe_test_texts = 80;
  eo.bootstrap = 50;
  auto self = nlohmann::json::parse(lumen::evaluate_flags(d1, held, eo).to_json());
  // A window per text that has more than BOS (a few texts are dropped).
  EXPECT_EQ(self["probe_flags"].get<std::string>(), "off");
  EXPECT_GT(self["probe_train_windows"].get<int64_t>(), 50);
  EXPECT_LE(self["probe_train_windows"].get<int64_t>(), 60);
  EXPECT_GT(self["probe_test_windows"].get<int64_t>(), 70);
  EXPECT_LE(self["probe_test_windows"].get<int64_t>(), 80);
  int shifted_views = 0;
  for (const auto& [view, sh] : self["probe_shifts"].items()) {
    if (sh["concepts"].get<int64_t>() == 0) continue;
    ++shifted_views;
    EXPECT_EQ(sh["mean"].get<double>(), 0.0) << view;
    EXPECT_EQ(sh["lo"].get<double>(), 0.0) << view;
    EXPECT_EQ(sh["hi"].get<double>(), 0.0) << view;
    EXPECT_EQ(sh["lower"].get<int64_t>(), 0) << view;
  }
  EXPECT_GT(shifted_views, 0);
  eo.probe_flags = "sideways";
  EXPECT_THROW(lumen::evaluate_flags(d1, held, eo), lumen::Error);
  eo.probe_flags = "own";
  eo.probe_corpus.clear();
  EXPECT_THROW(lumen::evaluate_flags(d1, held, eo), lumen::Error);
}

}  // namespace
