// Test helpers: where ../shared lives, and skipping (loudly) when it is absent.
#pragma once

#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace lumen_test {

// LUMEN_SHARED overrides the configure-time default (the project's ../shared).
inline std::string shared_dir() {
  const char* env = std::getenv("LUMEN_SHARED");
  return env && *env ? std::string(env) : std::string(LUMEN_SHARED_DEFAULT);
}

inline std::string shared_path(const std::string& rel) { return shared_dir() + "/" + rel; }

inline bool path_exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

// A fresh temp directory per test, removed by the caller if it cares.
inline std::string temp_dir(const std::string& tag) {
  std::string tmpl = std::string(::testing::TempDir()) + "lumen_" + tag + "_XXXXXX";
  char* made = ::mkdtemp(tmpl.data());
  return made ? std::string(made) : std::string("/tmp");
}

// The lumen binary under test: LUMEN_CLI (set by ctest), else the build folder's.
inline std::string cli_path() {
  const char* p = std::getenv("LUMEN_CLI");
  return p && *p ? std::string(p) : std::string(LUMEN_BINARY_DIR) + "/lumen";
}

struct CliRun {
  int code;  // exit status, or 128 + signal
  std::string out, err;
};

// Runs `lumen ARGS` through the shell (ARGS is quoted by the caller) and captures both streams.
inline CliRun run_cli(const std::string& args) {
  const std::string dir = temp_dir("cli");
  const std::string cmd = cli_path() + " " + args + " >" + dir + "/out 2>" + dir + "/err";
  const int status = std::system(cmd.c_str());
  auto slurp = [](const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), slurp(dir + "/out"), slurp(dir + "/err")};
}

}  // namespace lumen_test

// Skips the test with a message naming the missing path and the setting that moves it.
#define LUMEN_REQUIRE_SHARED(rel)                                                              \
  do {                                                                                         \
    const std::string lumen_p_ = lumen_test::shared_path(rel);                                 \
    if (!lumen_test::path_exists(lumen_p_))                                                    \
      GTEST_SKIP() << "shared test data missing: " << lumen_p_                                 \
                   << " (set LUMEN_SHARED to the folder holding models/, data/, testdata/)";   \
  } while (0)
