// Process set-up that must happen before any thread pool starts.
#pragma once

namespace lumen {

// libgomp reads OMP_WAIT_POLICY when it is loaded, before main(); with its default, libtorch's
// idle OpenMP threads spin and steal the cores OpenBLAS's threads need (measured 2.3-4x slower
// forwards on 2 cores). If the variable is unset, this sets OMP_WAIT_POLICY=PASSIVE and re-executes
// the program so the setting takes effect; it returns normally when no re-exec is needed or
// possible. Call first thing in main(). LUMEN_KEEP_OMP_POLICY=1 disables it (for benchmarks).
// It also keeps up to 64 MiB of freed memory on glibc's heap instead of unmapping it, so the
// temporaries of repeated forward passes do not fault in fresh zeroed pages every time (unless
// GLIBC_TUNABLES names a malloc setting or MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ is set),
// and it installs a CPU allocator that keeps freed blocks of 32 MiB and more (logits at batch size
// and their gradients) for reuse, up to LUMEN_CPU_CACHE_MB (default: 1/8 of RAM, at most 1024; 0: off).
void init_runtime(int argc, char** argv);

// "passive" / "active" / "default": what this process runs with.
const char* omp_wait_policy();

}  // namespace lumen
