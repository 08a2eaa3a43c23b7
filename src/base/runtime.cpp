#include "lumen/runtime.h"

#include <strings.h>
#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <cstdlib>
#include <cstring>
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

}  // namespace

void init_runtime(int argc, char** argv) {
  keep_freed_heap();
  if (std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT")) return;
  if (const char* keep = std::getenv("LUMEN_KEEP_OMP_POLICY"); keep && *keep == '1') return;
  if (std::getenv("LUMEN_REEXECED")) return;  // never loop
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  setenv("LUMEN_REEXECED", "1", 1);
  std::vector<char*> args(argv, argv + argc);
  args.push_back(nullptr);
  execv("/proc/self/exe", args.data());
  // exec failed (no /proc?): carry on with the spinning default rather than fail.
  (void)argc;
}

const char* omp_wait_policy() {
  const char* p = std::getenv("OMP_WAIT_POLICY");
  if (!p) return std::getenv("GOMP_SPINCOUNT") ? "spincount" : "default";
  if (strcasecmp(p, "passive") == 0) return "passive";
  if (strcasecmp(p, "active") == 0) return "active";
  return p;
}

}  // namespace lumen
