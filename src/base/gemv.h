// Matrix-vector products for decoding (one input row), on two cores.
#pragma once

#include <cstdint>

namespace lumen {

// y[N] = W[N,D] . x[D], all float32, W row-major and contiguous.
//
// Decoding is bound by how fast the weights stream from memory, and one core streams about half of
// what two do. OpenBLAS splits a gemv across its pool too, but every call then waits for all of its
// workers: on a busy machine a descheduled worker stalls each of the ~50 products of a decode step.
// Here the rows are cut into chunks that the calling thread and one helper thread claim from a
// shared counter. The caller never waits for the helper to wake up, only for chunks the helper has
// already claimed, so a helper that is late or descheduled costs its share and nothing more.
// Small products (under 64K weights) and calls made while another thread is using the helper run
// on the calling thread alone. Results do not depend on how the chunks were shared.
void gemv_rows(const float* W, const float* x, float* y, int64_t N, int64_t D);

}  // namespace lumen
