// Test helpers: where ../shared lives, and skipping (loudly) when it is absent.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <sys/stat.h>

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

}  // namespace lumen_test

// Skips the test with a message naming the missing path and the setting that moves it.
#define LUMEN_REQUIRE_SHARED(rel)                                                              \
  do {                                                                                         \
    const std::string lumen_p_ = lumen_test::shared_path(rel);                                 \
    if (!lumen_test::path_exists(lumen_p_))                                                    \
      GTEST_SKIP() << "shared test data missing: " << lumen_p_                                 \
                   << " (set LUMEN_SHARED to the folder holding models/, data/, testdata/)";   \
  } while (0)
