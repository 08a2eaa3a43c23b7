#include "lumen/runtime.h"

#include <strings.h>
#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <torch/version.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

namespace lumen {

namespace {

// glibc gives freed heap memory back to the OS once more than 2x the largest recent allocation sits
// free at the top of the heap, so a forward pass whose temporaries are a few MB each maps, faults in
// and zeroes fresh pages for nearly every op: 10-15% of the CPU time of the viz evaluator's 512 x 13
// token forward (bench/bench_viz.cpp) went to page faults and clear_page. Keeping up to 64 MiB free
// on the heap (allocations under 32 MiB, glibc's own dynamic ceiling, always from the heap) removes
// that. A user's own GLIBC_TUNABLES or MALLOC_*_ variables take precedence.
void keep_freed_heap() {
#if defined(__GLIBC__)
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if ((tunables && std::strstr(tunables, "malloc")) || std::getenv("MALLOC_MMAP_THRESHOLD_") ||
      std::getenv("MALLOC_TRIM_THRESHOLD_"))
    return;
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
#endif
}

// glibc serves allocations of 32 MiB and more (its ceiling for the heap) with a fresh mmap, so
// every forward pass at batch size faults in and zeroes its logits and their gradients again: page
// faults and clear_page took 8-10% of the CPU time of an 8x128 forward+backward on the 42M shape
// (perf, bench/). This allocator keeps such blocks when torch frees them and hands them back for a
// request of about the same size (at most 1/8 larger). What it keeps is capped: LUMEN_CPU_CACHE_MB,
// default 1/8 of physical memory up to 1024; 0 turns the cache off. The oldest blocks go first.
// libtorch 2.3 made Allocator::allocate non-const and added copy_data.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
#define LUMEN_ALLOCATE_CONST
#else
#define LUMEN_ALLOCATE_CONST const
#endif

class CachingCpuAllocator final : public c10::Allocator {
 public:
  CachingCpuAllocator(c10::Allocator* fallback, size_t limit) : fallback_(fallback), limit_(limit) {}

  c10::DataPtr allocate(size_t n) LUMEN_ALLOCATE_CONST override {
    if (n < kMin) return fallback_->allocate(n);
    CachingCpuAllocator& self = instance();
    void* base = nullptr;
    {
      std::lock_guard<std::mutex> lk(self.mutex_);
      size_t best = self.blocks_.size();
      for (size_t i = 0; i < self.blocks_.size(); ++i) {
        const size_t cap = self.blocks_[i].cap;
        if (cap >= n && cap - n <= n / 8 && (best == self.blocks_.size() || cap < self.blocks_[best].cap)) best = i;
      }
      if (best < self.blocks_.size()) {
        base = self.blocks_[best].base;
        self.cached_ -= self.blocks_[best].cap;
        self.blocks_.erase(self.blocks_.begin() + static_cast<std::ptrdiff_t>(best));
      }
    }
    if (!base) {
      const size_t cap = (n + kGrain - 1) / kGrain * kGrain;
      if (posix_memalign(&base, kHeader, cap + kHeader) != 0) throw std::bad_alloc();
      *static_cast<size_t*>(base) = cap;
    }
    void* data = static_cast<char*>(base) + kHeader;
    {
      std::lock_guard<std::mutex> lk(self.mutex_);
      self.live_.insert(data);
    }
    // Context == data: torch's raw_allocate (bf16 CPU matmuls use it) requires that.
    return {data, data, &release_data, c10::Device(c10::DeviceType::CPU)};
  }

  // raw_deallocate gets a bare pointer, which may also be a small block from the fallback.
  c10::DeleterFnPtr raw_deleter() const override { return &raw_delete; }

  void copy_data(void* dest, const void* src, std::size_t count) const { std::memcpy(dest, src, count); }

  static void install(size_t limit) {
    if (instance_ptr()) return;  // installed once, never destroyed (tensors may outlive main)
    instance_ptr() = new CachingCpuAllocator(c10::GetCPUAllocator(), limit);
    c10::SetCPUAllocator(instance_ptr(), /*priority=*/100);
  }

 private:
  static constexpr size_t kMin = size_t(32) << 20, kGrain = size_t(1) << 20, kHeader = 64;
  struct Block {
    void* base;
    size_t cap;
    uint64_t seq;
  };

  static CachingCpuAllocator*& instance_ptr() {
    static CachingCpuAllocator* p = nullptr;
    return p;
  }
  static CachingCpuAllocator& instance() { return *instance_ptr(); }

  static void raw_delete(void* data) {
    CachingCpuAllocator& self = instance();
    bool ours;
    {
      std::lock_guard<std::mutex> lk(self.mutex_);
      ours = self.live_.count(data) > 0;
    }
    if (ours) {
      release_data(data);
      return;
    }
    const c10::DeleterFnPtr d = self.fallback_->raw_deleter();
    if (d) d(data);
    else std::free(data);
  }

  static void release_data(void* data) {
    {
      CachingCpuAllocator& self = instance();
      std::lock_guard<std::mutex> lk(self.mutex_);
      self.live_.erase(data);
    }
    release(static_cast<char*>(data) - kHeader);
  }

  static void release(void* base) {
    CachingCpuAllocator& self = instance();
    const size_t cap = *static_cast<size_t*>(base);
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lk(self.mutex_);
      if (cap > self.limit_) {
        drop.push_back(base);
      } else {
        while (self.cached_ + cap > self.limit_ && !self.blocks_.empty()) {
          size_t oldest = 0;
          for (size_t i = 1; i < self.blocks_.size(); ++i)
            if (self.blocks_[i].seq < self.blocks_[oldest].seq) oldest = i;
          drop.push_back(self.blocks_[oldest].base);
          self.cached_ -= self.blocks_[oldest].cap;
          self.blocks_.erase(self.blocks_.begin() + static_cast<std::ptrdiff_t>(oldest));
        }
        self.blocks_.push_back({base, cap, self.seq_++});
        self.cached_ += cap;
      }
    }
    for (void* p : drop) std::free(p);
  }

  c10::Allocator* fallback_;
  size_t limit_;
  mutable std::mutex mutex_;
  std::vector<Block> blocks_;
  std::unordered_set<void*> live_;  // data pointers of large blocks in use
  size_t cached_ = 0;
  uint64_t seq_ = 0;
};

void cache_large_cpu_blocks() {
  size_t limit_mb = 1024;
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  if (pages > 0 && page > 0) limit_mb = std::min<size_t>(limit_mb, static_cast<size_t>(pages) / 8 * page >> 20);
  if (const char* e = std::getenv("LUMEN_CPU_CACHE_MB"); e && *e) limit_mb = std::strtoull(e, nullptr, 10);
  if (limit_mb == 0) return;
  CachingCpuAllocator::install(limit_mb << 20);
}

// libgomp reads OMP_WAIT_POLICY when it loads; setting it now needs a fresh exec of this program.
void reexec_with_passive_omp(int argc, char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT")) return;
  if (const char* keep = std::getenv("LUMEN_KEEP_OMP_POLICY"); keep && *keep == '1') return;
  if (std::getenv("LUMEN_REEXECED")) return;  // never loop
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  setenv("LUMEN_REEXECED", "1", 1);
  std::vector<char*> args(argv, argv + argc);
  args.push_back(nullptr);
  execv("/proc/self/exe", args.data());
  // exec failed (no /proc?): carry on with the spinning default rather than fail.
}

}  // namespace

void init_runtime(int argc, char** argv) {
  keep_freed_heap();
  reexec_with_passive_omp(argc, argv);
  cache_large_cpu_blocks();
}

const char* omp_wait_policy() {
  const char* p = std::getenv("OMP_WAIT_POLICY");
  if (!p) return std::getenv("GOMP_SPINCOUNT") ? "spincount" : "default";
  if (strcasecmp(p, "passive") == 0) return "passive";
  if (strcasecmp(p, "active") == 0) return "active";
  return p;
}

}  // namespace lumen
