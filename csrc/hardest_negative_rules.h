// Rules of the hardest off-diagonal similarity (MegaBatchMarginLoss's negative mining), shared by the
// CPU kernel (csrc/cpu/hardest_negative_kernel.cpp) and the CUDA kernel (csrc/cuda/hardest_negative_kernel.cu):
// host/device functions, no CUDA includes, so g++ compiles them and the CPU suite runs every rule the
// GPU runs.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

#include "arg_extreme_rules.h"

namespace embedplug {
namespace hardest_negative {

// A row's running maximum is the shared ArgExtreme (csrc/arg_extreme_rules.h) in torch.max's order
// over a row, which is what sentence-transformers' MegaBatchMarginLoss calls: a NaN beats every number
// (NaN propagates), among equal values (or two NaNs) the smaller column wins. Empty: (-inf, kNoIndex).
inline constexpr NanPolicy kRowMaxNan = NanPolicy::kPropagate;

template <typename scalar_t>
C10_HOST_DEVICE inline void keep(ArgExtreme<scalar_t>& best, scalar_t value, int64_t index) {
  keep_max<kRowMaxNan>(best, value, index);
}

// The index an output holds: -1 for an anchor without a candidate.
template <typename scalar_t>
C10_HOST_DEVICE inline int64_t output_index(const ArgExtreme<scalar_t>& best) {
  return is_set(best) ? best.index : int64_t(-1);
}

// Column `column` is a negative of anchor row `row` unless it is the anchor's own positive.
C10_HOST_DEVICE inline bool is_negative(int64_t row, int64_t column) { return row != column; }

}  // namespace hardest_negative
}  // namespace embedplug
