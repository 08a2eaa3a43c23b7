// Shared by the CLI's command files: model arguments and small parsing helpers.
#pragma once

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "lumen/error.h"
#include "lumen/model.h"

namespace lumen {
class Sae;
}

namespace lumen_cli {

using lumen::Error;
using lumen::ErrorKind;

struct ModelArgs {
  std::string path;
  std::string tokenizer;
  std::string device = "cpu";
  std::string dtype = "f32";

  void add(CLI::App* cmd, bool positional_required = true) {
    auto* o = cmd->add_option("model", path, "model folder (HF config.json + safetensors) or llama2.c .bin");
    if (positional_required) o->required();
    cmd->add_option("--tokenizer", tokenizer, "tokenizer file or folder (default: found next to the model)");
    cmd->add_option("--device", device, "cpu, cuda or cuda:N")->capture_default_str();
    cmd->add_option("--dtype", dtype, "compute dtype: f32, bf16, f16")->capture_default_str();
  }

  lumen::Model load(bool need_tokenizer) const {
    lumen::LoadOptions lo;
    lo.tokenizer_path = tokenizer;
    lo.require_tokenizer = need_tokenizer;
    lo.device = lumen::parse_device(device);
    lo.dtype = lumen::parse_dtype(dtype);
    return lumen::Model::load(path, lo);
  }
};

inline std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::string tok;
  std::stringstream ss(s);
  while (ss >> tok) {
    for (auto& ch : tok)
      if (ch == ',') ch = ' ';
    std::stringstream inner(tok);
    std::string part;
    while (inner >> part) {
      try {
        size_t used = 0;
        long v = std::stol(part, &used);
        lumen::require(used == part.size(), ErrorKind::Arg, "--ids: '" + part + "' is not an integer");
        ids.push_back(static_cast<int32_t>(v));
      } catch (const std::logic_error&) {
        throw Error(ErrorKind::Arg, "--ids: '" + part + "' is not an integer");
      }
    }
  }
  return ids;
}

// Encodes a prompt the way the tokenizer's family does (BOS for llama2.c/SentencePiece).
inline std::vector<int32_t> encode_prompt(const lumen::Model& model, const std::string& text) {
  const auto& tok = model.require_tokenizer();
  auto ids = tok.encode(text, tok.adds_bos_by_default());
  if (ids.empty()) {
    const int32_t start = tok.bos_id() >= 0 ? tok.bos_id() : model.config().eos_id;
    lumen::require(start >= 0, ErrorKind::Arg, "empty prompt and the tokenizer has no BOS/EOS to start from");
    ids.push_back(start);
  }
  return ids;
}

inline std::string shape_str(const at::Tensor& t) {
  std::ostringstream o;
  o << "[";
  for (int64_t i = 0; i < t.dim(); ++i) o << (i ? "," : "") << t.size(i);
  o << "]";
  return o.str();
}

// Each command file registers its subcommands; a subcommand's callback stores its exit code in rc.
void add_model_commands(CLI::App& app, int& rc);
void add_sae_commands(CLI::App& app, int& rc);
void add_scope_commands(CLI::App& app, int& rc);
void add_flags_commands(CLI::App& app, int& rc);
void add_features_commands(CLI::App& app, int& rc);
void add_toy_commands(CLI::App& app, int& rc);
void add_viz_commands(CLI::App& app, int& rc);
void add_circuit_commands(CLI::App& app, int& rc);

// ADAPT on three latents of the middle SAE, each next to its top dataset contexts (make demo).
void demo_viz(const lumen::Model& model, const std::vector<lumen::Sae>& saes, const std::string& store);
// Builds one small agreement circuit (template pairs, one SAE, AtP) and writes its HTML to out_dir.
void demo_circuit(const lumen::Model& model, const std::vector<lumen::Sae>& saes, const std::string& store,
                  const std::string& out_dir);

}  // namespace lumen_cli
