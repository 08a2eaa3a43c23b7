#include "base/gemv.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define LUMEN_GEMV_X86 1
#endif

namespace lumen {
namespace {

// ---- kernels: rows [r0, r1) of y = W x. Each row's sum is formed the same way whichever path or
// thread computes it, so results never depend on the split.

void rows_plain(const float* W, const float* x, float* y, int64_t r0, int64_t r1, int64_t D) {
  for (int64_t i = r0; i < r1; ++i) {
    const float* a = W + i * D;
    float s = 0.f;
    for (int64_t j = 0; j < D; ++j) s += a[j] * x[j];
    y[i] = s;
  }
}

#ifdef LUMEN_GEMV_X86
__attribute__((target("avx2,fma"))) inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Four rows per pass share each load of x; 8-wide FMA chains, then the scalar tail.
__attribute__((target("avx2,fma"))) void rows_avx2(const float* W, const float* x, float* y, int64_t r0, int64_t r1,
                                                    int64_t D) {
  const int64_t D8 = D & ~int64_t(7);
  int64_t i = r0;
  for (; i + 4 <= r1; i += 4) {
    const float* a = W + i * D;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (int64_t j = 0; j < D8; j += 8) {
      const __m256 xv = _mm256_loadu_ps(x + j);
      s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), xv, s0);
      s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + D + j), xv, s1);
      s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + 2 * D + j), xv, s2);
      s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + 3 * D + j), xv, s3);
    }
    float t[4] = {hsum8(s0), hsum8(s1), hsum8(s2), hsum8(s3)};
    for (int r = 0; r < 4; ++r) {
      for (int64_t j = D8; j < D; ++j) t[r] += a[r * D + j] * x[j];
      y[i + r] = t[r];
    }
  }
  for (; i < r1; ++i) {
    const float* a = W + i * D;
    __m256 s = _mm256_setzero_ps();
    for (int64_t j = 0; j < D8; j += 8) s = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(x + j), s);
    float t = hsum8(s);
    for (int64_t j = D8; j < D; ++j) t += a[j] * x[j];
    y[i] = t;
  }
}
#endif

using RowsFn = void (*)(const float*, const float*, float*, int64_t, int64_t, int64_t);

RowsFn pick_kernel() {
#ifdef LUMEN_GEMV_X86
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return rows_avx2;
#endif
  return rows_plain;
}

const RowsFn kRows = pick_kernel();

// ---- the two-thread split. `next` packs a job generation (24 bits), the job's chunk count (20)
// and the next unclaimed chunk (20), so a claim is one compare-and-swap that fails for a finished
// or newer job: a late helper can never run a chunk of a job whose caller has returned.

constexpr int kIdxBits = 20;
constexpr uint64_t kIdxMask = (uint64_t(1) << kIdxBits) - 1;
constexpr int64_t kMaxChunks = int64_t(1) << kIdxBits;

uint64_t pack(uint64_t gen, uint64_t chunks, uint64_t idx) { return (gen << (2 * kIdxBits)) | (chunks << kIdxBits) | idx; }
uint64_t gen_of(uint64_t v) { return v >> (2 * kIdxBits); }

class Pool {
 public:
  Pool() { std::thread([this] { helper(); }).detach(); }

  void run(const float* W, const float* x, float* y, int64_t N, int64_t D, int64_t rows_per_chunk) {
    W_ = W, x_ = x, y_ = y, N_ = N, D_ = D, rows_ = rows_per_chunk;
    const int64_t chunks = (N + rows_per_chunk - 1) / rows_per_chunk;
    done_.store(0, std::memory_order_relaxed);
    gen_ = (gen_ + 1) & ((uint64_t(1) << 24) - 1);
    next_.store(pack(gen_, chunks, 0), std::memory_order_seq_cst);
    if (sleeping_.load(std::memory_order_seq_cst)) {
      std::lock_guard<std::mutex> lk(m_);
      cv_.notify_one();
    }
    work(gen_);
    for (int spins = 0; done_.load(std::memory_order_acquire) < chunks; ++spins) {
      if (spins < 4096) {
#ifdef LUMEN_GEMV_X86
        _mm_pause();
#endif
      } else {
        std::this_thread::yield();  // the helper was descheduled inside a chunk it claimed
      }
    }
  }

  std::mutex owner;  // one caller at a time; others compute alone

 private:
  // Claims and runs chunks of job `gen` until none is left.
  void work(uint64_t gen) {
    for (;;) {
      uint64_t v = next_.load(std::memory_order_acquire);
      for (;;) {
        if (gen_of(v) != gen || (v & kIdxMask) >= ((v >> kIdxBits) & kIdxMask)) return;
        if (next_.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel, std::memory_order_acquire)) break;
      }
      const int64_t c = static_cast<int64_t>(v & kIdxMask);
      const int64_t r0 = c * rows_, r1 = std::min(N_, r0 + rows_);
      kRows(W_, x_, y_, r0, r1, D_);
      done_.fetch_add(1, std::memory_order_release);
    }
  }

  // Waits for a new job: spins ~50 us (decode issues products every few microseconds), then sleeps.
  void helper() {
    uint64_t seen = gen_of(next_.load(std::memory_order_acquire));
    for (;;) {
      uint64_t g = gen_of(next_.load(std::memory_order_acquire));
      const auto t0 = std::chrono::steady_clock::now();
      for (int spins = 0; g == seen; ++spins) {
#ifdef LUMEN_GEMV_X86
        _mm_pause();
#endif
        if ((spins & 255) == 255 && std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(50)) break;
        g = gen_of(next_.load(std::memory_order_acquire));
      }
      if (g == seen) {
        std::unique_lock<std::mutex> lk(m_);
        sleeping_.store(true, std::memory_order_seq_cst);
        cv_.wait(lk, [&] { return gen_of(next_.load(std::memory_order_seq_cst)) != seen; });
        sleeping_.store(false, std::memory_order_relaxed);
        g = gen_of(next_.load(std::memory_order_acquire));
      }
      seen = g;
      work(g);
    }
  }

  // Job fields: written by the owner before it publishes `next_`, read by a claimer after a claim.
  const float* W_ = nullptr;
  const float* x_ = nullptr;
  float* y_ = nullptr;
  int64_t N_ = 0, D_ = 0, rows_ = 1;
  uint64_t gen_ = 0;  // owner only
  std::atomic<uint64_t> next_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<bool> sleeping_{false};
  std::mutex m_;
  std::condition_variable cv_;
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: its detached helper lives as long as the process
  return *p;
}

}  // namespace

void gemv_rows(const float* W, const float* x, float* y, int64_t N, int64_t D) {
  if (N <= 0) return;
  // Chunks of about 32 KB of weights, a multiple of 4 rows (the kernel's row block).
  const int64_t rows = std::max<int64_t>(4, (8192 / std::max<int64_t>(D, 1)) & ~int64_t(3));
  static const bool several_cores = std::thread::hardware_concurrency() > 1;  // reads /sys: once
  const bool split = several_cores && N * D >= (int64_t(1) << 16) && (N + rows - 1) / rows < kMaxChunks;
  if (split) {
    Pool& p = pool();
    std::unique_lock<std::mutex> lk(p.owner, std::try_to_lock);
    if (lk.owns_lock()) {
      p.run(W, x, y, N, D, rows);
      return;
    }
  }
  kRows(W, x, y, 0, N, D);
}

}  // namespace lumen
