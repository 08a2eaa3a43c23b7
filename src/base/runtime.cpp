#include "lumen/runtime.h"

#include <dlfcn.h>
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

namespace {

struct OpenBlas {
  int (*get)() = nullptr;
  void (*set)(int) = nullptr;
  OpenBlas() {
    get = reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
    set = reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
    if (!get || !set) get = nullptr, set = nullptr;
  }
};

const OpenBlas& openblas() {
  static const OpenBlas o;
  return o;
}

}  // namespace

SingleThreadedBlas::SingleThreadedBlas() {
  const OpenBlas& o = openblas();
  if (!o.set) return;
  saved_ = o.get();
  if (saved_ > 1) o.set(1);
}

SingleThreadedBlas::~SingleThreadedBlas() {
  if (saved_ > 1) openblas().set(saved_);
}

}  // namespace lumen
