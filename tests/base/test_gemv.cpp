// The decode gemv (src/base/gemv.h): agrees with a double-precision reference on shapes with row
// and column tails, gives bit-identical results however the rows were shared between threads,
// and stays correct when several threads call it at once (all but one compute alone).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <thread>
#include <vector>

#include "base/gemv.h"

namespace {

struct Problem {
  int64_t N, D;
  std::vector<float> W, x;
};

Problem make(int64_t N, int64_t D, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  Problem p{N, D, std::vector<float>(N * D), std::vector<float>(D)};
  for (auto& v : p.W) v = nd(rng);
  for (auto& v : p.x) v = nd(rng);
  return p;
}

std::vector<float> run(const Problem& p) {
  std::vector<float> y(p.N, -1.f);
  lumen::gemv_rows(p.W.data(), p.x.data(), y.data(), p.N, p.D);
  return y;
}

TEST(Gemv, MatchesReferenceOnTailShapes) {
  const int64_t shapes[][2] = {{1, 1}, {3, 7}, {5, 9}, {768, 288}, {1001, 300}, {4099, 37}, {32000, 64}};
  for (const auto& s : shapes) {
    const Problem p = make(s[0], s[1], static_cast<uint32_t>(s[0] * 31 + s[1]));
    const auto y = run(p);
    for (int64_t i = 0; i < p.N; ++i) {
      double ref = 0, mag = 0;
      for (int64_t j = 0; j < p.D; ++j) {
        ref += static_cast<double>(p.W[i * p.D + j]) * p.x[j];
        mag += std::abs(static_cast<double>(p.W[i * p.D + j]) * p.x[j]);
      }
      ASSERT_NEAR(y[i], ref, 1e-5 * (mag + 1)) << "shape " << p.N << "x" << p.D << " row " << i;
    }
  }
}

TEST(Gemv, SameBitsWhateverTheSplit) {
  const Problem p = make(4099, 300, 7);  // big enough to be split between two threads
  const auto first = run(p);
  for (int rep = 0; rep < 50; ++rep) ASSERT_EQ(run(p), first) << "repetition " << rep;
}

TEST(Gemv, ConcurrentCallersAreCorrect) {
  const Problem a = make(2048, 288, 1), b = make(1500, 512, 2);
  const auto ya = run(a), yb = run(b);
  std::vector<std::thread> ts;
  std::vector<int> bad(4, 0);
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      const Problem& p = t % 2 ? b : a;
      const auto& want = t % 2 ? yb : ya;
      for (int rep = 0; rep < 100; ++rep)
        if (run(p) != want) ++bad[t];
    });
  for (auto& t : ts) t.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(bad[t], 0) << "thread " << t;
}

}  // namespace
