// The SwiGLU kernel (src/base/swiglu.h): within a few float ulps of a double-precision reference
// over the whole input range, including the clamped extremes and lengths with a tail.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "base/swiglu.h"

namespace {

double reference(float g, float u) { return static_cast<double>(g) / (1.0 + std::exp(-static_cast<double>(g))) * u; }

void expect_close(const std::vector<float>& g, const std::vector<float>& u) {
  std::vector<float> y(g.size(), std::nanf(""));
  lumen::swiglu_rows(g.data(), u.data(), y.data(), static_cast<int64_t>(g.size()));
  for (size_t i = 0; i < g.size(); ++i) {
    const double want = reference(g[i], u[i]);
    // A few ulps of the result. Gates in [-88.72, -88) use exp(88) (the clamp), which leaves results
    // under 1e-35 in magnitude where the exact ones are smaller still.
    const double tol = 8 * std::numeric_limits<float>::epsilon() * std::abs(want) + 1e-35;
    ASSERT_NEAR(y[i], want, tol) << "i " << i << " gate " << g[i] << " up " << u[i];
  }
}

TEST(Swiglu, MatchesReferenceOverTheRange) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> wide(-120.f, 120.f);
  std::normal_distribution<float> nd(0.f, 3.f);
  for (int64_t n : {1, 7, 8, 9, 31, 1000, 4099}) {
    std::vector<float> g(n), u(n);
    for (int64_t i = 0; i < n; ++i) {
      g[i] = (i % 3 == 0) ? wide(rng) : nd(rng);
      u[i] = nd(rng);
    }
    expect_close(g, u);
  }
}

TEST(Swiglu, ExtremesAndSpecialValues) {
  std::vector<float> g = {0.f, -0.f, 1e-30f, -1e-30f, 86.9f, -86.9f, 87.5f, -87.5f, 88.7f, -88.7f, 200.f, -200.f,
                          3.4e38f, -3.4e38f, 0.5f, -0.5f};
  std::vector<float> u(g.size(), 0.5f);  // 3.4e38 * 0.5 stays finite
  expect_close(g, u);
  std::vector<float> y(1);
  const float nan = std::nanf("");
  lumen::swiglu_rows(&nan, u.data(), y.data(), 1);
  EXPECT_TRUE(std::isnan(y[0]));
  std::vector<float> nans(9, nan), out(9);
  lumen::swiglu_rows(nans.data(), u.data(), out.data(), 9);
  for (float v : out) EXPECT_TRUE(std::isnan(v));
}

TEST(Swiglu, OutputMayAliasAnInput) {
  std::vector<float> g(37), u(37);
  for (int i = 0; i < 37; ++i) g[i] = 0.3f * (i - 18), u[i] = 0.1f * i;
  std::vector<float> want(37);
  lumen::swiglu_rows(g.data(), u.data(), want.data(), 37);
  lumen::swiglu_rows(g.data(), u.data(), g.data(), 37);
  EXPECT_EQ(g, want);
}

}  // namespace
