// silu(gate) * up over float32 arrays: the SwiGLU step of the forward pass, 8 lanes at a time.
#pragma once

#include <cstdint>

namespace lumen {

// y[i] = gate[i] / (1 + exp(-gate[i])) * up[i] for i in [0, n). y may alias gate or up.
// On AVX2 machines exp is a degree-6 polynomial after range reduction, within a few ulps of expf on
// [-87, 88] (exp(-87) below it, exp(88) up to 88.72, +inf above); elsewhere, and for the tail, std::exp.
void swiglu_rows(const float* gate, const float* up, float* y, int64_t n);

}  // namespace lumen
