// The accelerator the Device tests run on. LUMEN_TEST_DEVICE picks it (cuda, cuda:N, or cpu to
// check the tests themselves without a GPU); unset means cuda. Where that device is missing the
// tests skip with a message saying so.
#pragma once

#include <torch/torch.h>

#include "lumen/error.h"
#include "lumen/model.h"

#include <cstdlib>
#include <string>

namespace lumen_test {

inline std::string device_name() {
  const char* env = std::getenv("LUMEN_TEST_DEVICE");
  return env && *env ? std::string(env) : std::string("cuda");
}

inline c10::Device device() { return c10::Device(device_name()); }  // valid once device_available()

inline bool device_available() {
  try {
    lumen::parse_device(device_name());
    return true;
  } catch (const lumen::Error&) {
    return false;
  }
}

}  // namespace lumen_test

#define LUMEN_REQUIRE_DEVICE()                                                                     \
  do {                                                                                             \
    if (!lumen_test::device_available())                                                           \
      GTEST_SKIP() << "device " << lumen_test::device_name()                                       \
                   << " is not available here (LUMEN_TEST_DEVICE picks it; cpu checks the tests)"; \
  } while (0)
