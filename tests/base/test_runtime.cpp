// init_runtime's CPU allocator: large blocks freed by torch come back for requests of about the
// same size (so repeated forwards stop faulting in fresh pages), small ones and much larger ones do
// not, and tensors on reused blocks hold what was written.
#include <c10/core/CPUAllocator.h>
#include <torch/torch.h>

#include <cstdlib>

#include "common.h"
#include "lumen/runtime.h"

namespace {

TEST(Runtime, LargeFreedBlocksAreReused) {
  setenv("OMP_WAIT_POLICY", "PASSIVE", 0);  // already set under ctest: init_runtime must not re-exec
  char arg0[] = "test";
  char* argv[] = {arg0, nullptr};
  lumen::init_runtime(1, argv);
  const int64_t n = (40 << 20) / 4;  // 40 MiB of float32
  void* first = nullptr;
  {
    auto a = torch::full({n}, 1.5f);
    first = a.data_ptr();
  }
  auto b = torch::full({n - 1000}, 2.5f);  // slightly smaller: the same block
  EXPECT_EQ(b.data_ptr(), first);
  EXPECT_TRUE((b == 2.5f).all().item<bool>());
  auto c = torch::zeros({2 * n});  // twice the size: a new block, zeroed
  EXPECT_NE(c.data_ptr(), first);
  EXPECT_TRUE((c == 0.f).all().item<bool>());
  auto small = torch::ones({1000});
  EXPECT_EQ(small.sum().item<double>(), 1000.0);

  // Raw allocations (torch's bf16 CPU matmul makes them) of both sizes go back through raw_deleter.
  c10::Allocator* cpu = c10::GetCPUAllocator();
  for (size_t bytes : {size_t(40) << 20, size_t(4096)}) {
    void* p = cpu->raw_allocate(bytes);
    ASSERT_NE(p, nullptr);
    static_cast<char*>(p)[bytes - 1] = 1;
    cpu->raw_deallocate(p);
  }
  // An unembedding-sized bf16 product: its float32 scratch output (41 MiB) is a raw allocation.
  auto x = torch::randn({512, 64}).to(torch::kBFloat16);
  auto y = torch::linear(x, torch::randn({20000, 64}).to(torch::kBFloat16));
  EXPECT_EQ(y.sizes(), torch::IntArrayRef({512, 20000}));
}

}  // namespace
