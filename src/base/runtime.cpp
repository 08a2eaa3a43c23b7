#include "lumen/runtime.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <vector>

namespace lumen {

void init_runtime(int argc, char** argv) {
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
