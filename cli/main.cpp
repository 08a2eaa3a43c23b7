// The lumen command line: parses arguments and calls the library. Command files under cli/
// register their subcommands; only this file catches errors, prints one line and exits non-zero.
#include "common.h"
#include "lumen/runtime.h"

int main(int argc, char** argv) {
  lumen::init_runtime(argc, argv);
  CLI::App app{"lumen: look inside language models and steer them"};
  app.require_subcommand(1);
  int rc = 0;
  lumen_cli::add_model_commands(app, rc);
  lumen_cli::add_sae_commands(app, rc);
  lumen_cli::add_scope_commands(app, rc);
  lumen_cli::add_flags_commands(app, rc);
  lumen_cli::add_features_commands(app, rc);
  lumen_cli::add_toy_commands(app, rc);
  lumen_cli::add_viz_commands(app, rc);
  lumen_cli::add_circuit_commands(app, rc);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const lumen::Error& e) {
    std::fprintf(stderr, "lumen: %s\n", e.what());
    return 1;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "lumen: torch error: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lumen: %s\n", e.what());
    return 1;
  }
  return rc;
}
