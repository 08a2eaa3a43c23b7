#include "base/swiglu.h"

#include <cmath>
#include <limits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define LUMEN_SWIGLU_X86 1
#endif

namespace lumen {
namespace {

void swiglu_plain(const float* g, const float* u, float* y, int64_t i0, int64_t n) {
  for (int64_t i = i0; i < n; ++i) y[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
}

#ifdef LUMEN_SWIGLU_X86
// exp(x) = 2^k * exp(r): k = round(x / ln 2), r = x - k ln 2 with ln 2 split in two so that r is
// exact, |r| <= ln 2 / 2; exp(r) = 1 + r + r^2 p(r) with the Cephes single-precision coefficients.
// Above 88.7 the result is +inf, as expf's, so that silu of a huge negative gate is -0.
__attribute__((target("avx2,fma"))) inline __m256 exp8(__m256 x_in) {
  const __m256 x = _mm256_min_ps(_mm256_max_ps(x_in, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504089f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  // k in [-126, 127] after the clamp, so 2^k is a normal float built from its exponent bits.
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  const __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  const __m256 over = _mm256_cmp_ps(x_in, _mm256_set1_ps(88.72f), _CMP_GT_OQ);
  return _mm256_blendv_ps(y, _mm256_set1_ps(std::numeric_limits<float>::infinity()), over);
}

__attribute__((target("avx2,fma"))) void swiglu_avx2(const float* g, const float* u, float* y, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.f), zero = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gv = _mm256_loadu_ps(g + i);
    const __m256 e = exp8(_mm256_sub_ps(zero, gv));
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
  }
  swiglu_plain(g, u, y, i, n);
}
#endif

using SwigluFn = void (*)(const float*, const float*, float*, int64_t);

SwigluFn pick() {
#ifdef LUMEN_SWIGLU_X86
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return swiglu_avx2;
#endif
  return [](const float* g, const float* u, float* y, int64_t n) { swiglu_plain(g, u, y, 0, n); };
}

const SwigluFn kSwiglu = pick();

}  // namespace

void swiglu_rows(const float* gate, const float* up, float* y, int64_t n) {
  if (n > 0) kSwiglu(gate, up, y, n);
}

}  // namespace lumen
