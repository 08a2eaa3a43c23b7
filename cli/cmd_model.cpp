// lumen info | tokenize | generate | cache | demo
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>

#include "common.h"
#include "lumen/generate.h"
#include "lumen/runtime.h"
#include "lumen/features.h"
#include "lumen/files.h"
#include "lumen/sae.h"
#include "lumen/scopes.h"
#include "lumen/tensors.h"

namespace lumen_cli {
namespace {

// ---- commands -----------------------------------------------------------------------------------

int cmd_info(const ModelArgs& ma) {
  auto model = ma.load(false);
  const auto& c = model.config();
  std::cout << "model         " << model.path() << "\n" << c.summary();
  std::cout << "parameters    " << model.num_parameters() << "\n"
            << "compute       " << model.device() << " " << c10::toString(model.dtype()) << "\n"
            << "tokenizer     " << (model.tokenizer() ? model.tokenizer()->kind() + " (" + std::to_string(model.tokenizer()->vocab_size()) + " pieces)" : std::string("none found")) << "\n"
            << "omp policy    " << lumen::omp_wait_policy() << "\n";
  auto pts = model.hook_points();
  std::cout << "hook points   " << pts.size() << " (per layer, l = 0.." << c.n_layers - 1 << "):\n";
  for (const auto& p : pts) {
    if (p.is_global()) std::cout << "  " << p.name() << "\n";
    else if (p.layer == 0) std::cout << "  blocks.{l}." << p.name().substr(std::string("blocks.0.").size()) << "\n";
  }
  return 0;
}

int cmd_tokenize(const ModelArgs& ma, const std::string& text) {
  std::unique_ptr<lumen::Tokenizer> own;
  const lumen::Tokenizer* tok = nullptr;
  std::optional<lumen::Model> model;
  if (!ma.path.empty()) {
    model.emplace(ma.load(true));
    tok = model->tokenizer();
  } else {
    lumen::require(!ma.tokenizer.empty(), ErrorKind::Arg, "tokenize: give a MODEL or --tokenizer PATH");
    own = lumen::load_tokenizer(ma.tokenizer);
    tok = own.get();
  }
  auto ids = tok->encode(text, tok->adds_bos_by_default());
  for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
  std::cout << "\n";
  return 0;
}

struct GenArgs {
  std::string prompt;
  int64_t max_tokens = 64;
  double temperature = 0.0;
  int64_t top_k = 0;
  double top_p = 1.0;
  uint64_t seed = 0;
};

int cmd_generate(const ModelArgs& ma, const GenArgs& ga) {
  torch::NoGradGuard no_grad;
  auto model = ma.load(true);
  const auto& tok = model.require_tokenizer();
  auto ids = encode_prompt(model, ga.prompt);
  // Print the prompt as run.c does: each forced token through the streaming decoder.
  std::string out;
  if (tok.bos_id() < 0 || ids[0] != tok.bos_id()) out += tok.decode_step(-1, ids[0]);
  for (size_t i = 1; i < ids.size(); ++i) out += tok.decode_step(ids[i - 1], ids[i]);
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fflush(stdout);

  lumen::GenerateOptions go;
  go.max_new_tokens = ga.max_tokens;
  go.temperature = ga.temperature;
  go.top_k = ga.top_k;
  go.top_p = ga.top_p;
  go.seed = ga.seed;
  go.on_token = [&](size_t, int32_t prev, int32_t t) {
    std::string piece = tok.decode_step(prev, t);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  };
  auto res = lumen::generate(model, {ids}, go);
  std::printf("\n");
  std::fflush(stdout);  // the newline before the stderr summary on a shared terminal
  const double secs = res.prefill_seconds + res.decode_seconds;
  const size_t n = res.generated[0].size();
  std::fprintf(stderr, "generated %zu tokens in %.3f s (%.1f tok/s)\n", n, secs, secs > 0 ? n / secs : 0.0);
  return 0;
}

int cmd_cache(const ModelArgs& ma, const std::string& prompt, const std::string& ids_str, const std::string& hooks_pat,
              const std::string& out_path) {
  torch::NoGradGuard no_grad;
  lumen::require(prompt.empty() != ids_str.empty(), ErrorKind::Arg, "cache: give exactly one of --prompt or --ids");
  auto model = ma.load(!prompt.empty());
  auto ids = prompt.empty() ? parse_ids(ids_str) : encode_prompt(model, prompt);
  lumen::require(!ids.empty(), ErrorKind::Arg, "cache: no token ids");
  lumen::HookSet hooks;
  hooks.cache(hooks_pat);
  lumen::RunOptions ro;
  ro.hooks = &hooks;
  auto logits = model.forward(lumen::tokens_tensor(ids, model.device()), ro);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  tensors.emplace_back("logits", logits[0].to(torch::kCPU, torch::kFloat).contiguous());
  for (const auto& kv : hooks.cached()) tensors.emplace_back(kv.first, kv.second[0].to(torch::kCPU, torch::kFloat).contiguous());
  std::map<std::string, std::string> meta{{"model", model.path()}, {"hooks", hooks_pat}};
  std::string id_list;
  for (size_t i = 0; i < ids.size(); ++i) id_list += (i ? " " : "") + std::to_string(ids[i]);
  meta["input_ids"] = id_list;
  lumen::save_safetensors(out_path, tensors, meta);
  for (const auto& [name, t] : tensors) std::cout << name << " " << shape_str(t) << "\n";
  std::cout << "wrote " << tensors.size() << " tensors to " << out_path << "\n";
  return 0;
}

struct DemoArgs {
  std::string corpus, heldout, work_dir = "build/demo";
  int64_t sae_tokens = 400000;
};

// SAEs at every residual stream (trained once, then reused from the work dir), their eval table,
// and a feature harvest with two dashboards.
void demo_saes_and_features(const lumen::Model& model, const DemoArgs& d) {
  const auto& c = model.config();
  ::mkdir(d.work_dir.c_str(), 0755);
  std::vector<lumen::Sae> saes;
  std::printf("\n-- sparse autoencoders (TopK, 512 latents, %lld training tokens each; cached in %s)\n",
              (long long)d.sae_tokens, d.work_dir.c_str());
  std::printf("%-26s %4s %8s %8s %10s %10s %10s %8s %7s\n", "hook", "L0", "MSE", "FVU", "CE clean", "CE spliced",
              "CE ablated", "CE rec.", "dead");
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string hook = "blocks." + std::to_string(l) + ".hook_resid_post";
    const std::string dir = d.work_dir + "/sae_l" + std::to_string(l);
    if (!lumen::file_exists(dir + "/cfg.json")) {
      lumen::TrainOptions o;
      o.sae.arch = lumen::SaeArch::TopK;
      o.sae.k = l * 5 < c.n_layers * 2 ? 8 : (l * 5 < c.n_layers * 3 ? 16 : 32);  // deeper layers need more
      o.sae.d_sae = 512;
      o.sae.hook_name = hook;
      o.total_tokens = d.sae_tokens;
      o.lr = 2e-3;
      o.data.corpus = d.corpus;
      o.data.batch_tokens = 1024;
      o.out_dir = dir;
      o.log = [](const std::string&) {};
      std::fprintf(stderr, "training the %s SAE...\n", hook.c_str());
      lumen::train_sae(model, o);
    }
    auto sae = lumen::load_sae(dir, model.device());
    lumen::EvalOptions eo;
    eo.corpus = d.heldout.empty() ? d.corpus : d.heldout;
    eo.tokens = 20000;
    auto r = lumen::evaluate_sae(model, sae, eo);
    std::printf("%-26s %4.0f %8.4f %8.4f %10.4f %10.4f %10.4f %7.1f%% %6.1f%%\n", hook.c_str(), r.l0, r.mse, r.fvu,
                r.ce_loss_clean, r.ce_loss_spliced, r.ce_loss_ablated, 100 * r.ce_loss_recovered, 100 * r.dead_fraction);
    saes.push_back(sae);
  }
  const std::string store = d.work_dir + "/features.db";
  if (!lumen::file_exists(store)) {
    std::vector<lumen::FeatureSource> sources;
    for (const auto& sae : saes) sources.push_back(lumen::sae_feature_source(sae));
    lumen::HarvestOptions ho;
    ho.corpus = d.corpus;
    ho.out = store;
    ho.tokens = 100000;
    ho.log = [](const std::string&) {};
    auto hr = lumen::harvest_features(model, sources, ho);
    std::printf("\n-- feature harvest: %lld tokens, %zu SAEs, %.0f tok/s -> %s\n", (long long)hr.tokens, sources.size(),
                hr.seconds > 0 ? hr.tokens / hr.seconds : 0.0, store.c_str());
  }
  auto fs = lumen::FeatureStore::open(store);
  const std::string src = fs.sources()[std::min<size_t>(2, fs.sources().size() - 1)];
  for (const auto& [f, v] : fs.top(src, "max", 2)) {
    std::printf("\n");
    std::fputs(lumen::render_feature_dashboard(fs.info(src, f), isatty(STDOUT_FILENO)).c_str(), stdout);
  }
  demo_viz(model, saes, store);
  demo_circuit(model, saes, store, d.work_dir + "/circuit");
}

int cmd_demo(const ModelArgs& ma, const DemoArgs& da) {
  torch::NoGradGuard no_grad;
  auto t0 = std::chrono::steady_clock::now();
  auto model = ma.load(true);
  const auto& tok = model.require_tokenizer();
  const double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const auto& c = model.config();
  std::printf("== lumen demo: %s\n", model.path().c_str());
  std::printf("%s %lld layers, d_model %lld, %lld heads (%lld kv), vocab %lld; %lld parameters; loaded in %.1f ms\n",
              c.family.c_str(), (long long)c.n_layers, (long long)c.d_model, (long long)c.n_heads,
              (long long)c.n_kv_heads, (long long)c.d_vocab, (long long)model.num_parameters(), load_ms);

  const std::string prompt = "Once upon a time";
  auto ids = encode_prompt(model, prompt);
  for (int sampled = 0; sampled < 2; ++sampled) {
    lumen::GenerateOptions go;
    go.max_new_tokens = 80;
    go.temperature = sampled ? 0.8 : 0.0;
    go.top_p = sampled ? 0.95 : 1.0;
    go.seed = 42;
    auto res = lumen::generate(model, {ids}, go);
    std::string text;
    for (size_t i = 1; i < res.tokens[0].size(); ++i) text += tok.decode_step(res.tokens[0][i - 1], res.tokens[0][i]);
    const double secs = res.prefill_seconds + res.decode_seconds;
    std::printf("\n-- %s (%zu new tokens, %.0f tok/s):\n%s\n", sampled ? "sampled, T=0.8 top-p 0.95 seed 42" : "greedy",
                res.generated[0].size(), secs > 0 ? res.generated[0].size() / secs : 0.0, text.c_str());
    if (!sampled) ids = res.tokens[0];
  }

  // Cache every residual stream and attention pattern over the greedy story.
  lumen::HookSet hooks;
  hooks.cache("hook_embed,blocks.*.hook_resid_post,blocks.*.attn.hook_pattern,blocks.*.hook_mlp_out");
  lumen::RunOptions ro;
  ro.hooks = &hooks;
  model.forward(lumen::tokens_tensor(ids, model.device()), ro);
  std::printf("\n-- activation cache over the greedy story (%zu tokens)\n", ids.size());
  std::printf("%-32s %-16s %10s %10s %10s\n", "hook", "shape", "mean", "std", "max|x|");
  for (const auto& p : model.hook_points()) {
    const std::string name = p.name();
    if (!hooks.has(name)) continue;
    auto t = hooks.get(name).to(torch::kFloat);
    std::printf("%-32s %-16s %10.4f %10.4f %10.4f\n", name.c_str(), shape_str(t).c_str(), t.mean().item<double>(),
                t.std().item<double>(), t.abs().max().item<double>());
  }

  // One Superscopes sweep: the hidden state of "dog" patched into a story prompt, amplified.
  const std::string source = "Once upon a time, there was a little dog";
  lumen::ScopeTarget target;
  target.text = "One day, Lily saw a ?";
  lumen::ScopeOptions so;
  so.amps = {1, 2, 4, 8, 16};
  so.max_new_tokens = 16;
  const int64_t layer = std::min<int64_t>(1, c.n_layers - 1);
  auto v = lumen::scope_source_vector(model, source, layer, "resid_post", -1);
  auto rows = lumen::run_scope(model, v, layer, "resid_post", target, so);
  std::printf("\n-- superscopes: \"%s\" (last token, blocks.%lld.hook_resid_post) patched into \"%s\"\n", source.c_str(),
              (long long)layer, target.text.c_str());
  for (const auto& r : rows) {
    std::string text = r.text;
    for (auto& ch : text)
      if (ch == '\n') ch = ' ';
    std::printf("  x%-4g %s\n", r.amp, text.c_str());
  }
  if (!da.corpus.empty()) demo_saes_and_features(model, da);
  return 0;
}

}  // namespace

void add_model_commands(CLI::App& app, int& rc) {
  auto ma = std::make_shared<ModelArgs>();
  auto* info = app.add_subcommand("info", "architecture, sizes, dtype and hook points of a model");
  ma->add(info);
  info->callback([&rc, ma] { rc = cmd_info(*ma); });

  auto text = std::make_shared<std::string>();
  auto* tokenize = app.add_subcommand("tokenize", "print token ids (space separated) for a text");
  ma->add(tokenize, false);
  tokenize->add_option("--text", *text, "text to encode")->required();
  tokenize->callback([&rc, ma, text] { rc = cmd_tokenize(*ma, *text); });

  auto ga = std::make_shared<GenArgs>();
  auto* gen = app.add_subcommand("generate", "generate text with a KV cache");
  ma->add(gen);
  gen->add_option("--prompt", ga->prompt, "prompt text")->capture_default_str();
  gen->add_option("--max-tokens", ga->max_tokens, "new tokens at most")->capture_default_str();
  gen->add_option("--temperature", ga->temperature, "0 = greedy")->capture_default_str();
  gen->add_option("--top-k", ga->top_k, "0 = off")->capture_default_str();
  gen->add_option("--top-p", ga->top_p, "1 = off")->capture_default_str();
  gen->add_option("--seed", ga->seed, "sampling seed")->capture_default_str();
  gen->callback([&rc, ma, ga] { rc = cmd_generate(*ma, *ga); });

  struct CacheArgs {
    std::string prompt, ids, hooks = "all", out;
  };
  auto ca = std::make_shared<CacheArgs>();
  auto* cache = app.add_subcommand("cache", "run a prompt and write logits + hook activations to safetensors");
  ma->add(cache);
  cache->add_option("--prompt", ca->prompt, "prompt text");
  cache->add_option("--ids", ca->ids, "token ids, e.g. \"1 2 3\"");
  cache->add_option("--hooks", ca->hooks, "comma-separated hook names or globs (\"all\")")->capture_default_str();
  cache->add_option("--out", ca->out, "output .safetensors")->required();
  cache->callback([&rc, ma, ca] { rc = cmd_cache(*ma, ca->prompt, ca->ids, ca->hooks, ca->out); });

  auto da = std::make_shared<DemoArgs>();
  auto* demo = app.add_subcommand("demo", "the main job: generation, activation cache, a Superscopes sweep, SAEs and feature pages");
  ma->add(demo);
  demo->add_option("--corpus", da->corpus, "training text for the SAEs and the feature harvest (omit to skip them)");
  demo->add_option("--heldout", da->heldout, "evaluation text for the SAEs");
  demo->add_option("--work-dir", da->work_dir, "where trained SAEs and the feature store are cached")->capture_default_str();
  demo->add_option("--sae-tokens", da->sae_tokens, "training tokens per SAE")->capture_default_str();
  demo->callback([&rc, ma, da] { rc = cmd_demo(*ma, *da); });
}

}  // namespace lumen_cli
