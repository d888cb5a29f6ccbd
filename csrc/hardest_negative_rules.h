// Rules of the hardest off-diagonal similarity (MegaBatchMarginLoss's negative mining), shared by the
// CPU kernel (csrc/cpu/hardest_negative_kernel.cpp) and the CUDA kernel (csrc/cuda/hardest_negative_kernel.cu):
// host/device functions, no CUDA includes, so g++ compiles them and the CPU suite runs every rule the
// GPU runs.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace embedplug {
namespace hardest_negative {

// A row's running maximum: the best similarity so far and its column, index -1 while empty.
template <typename scalar_t>
struct RunningMax {
  scalar_t value;
  int64_t index;
};

// Whether candidate (value, index) replaces `best`, in torch.max's order over a row (what
// sentence-transformers' MegaBatchMarginLoss calls): a NaN beats every number (NaN propagates), and
// among equal values (or two NaNs) the smaller column wins (torch.max returns the first maximum).
// An empty candidate (index < 0) never wins; anything beats an empty best. Merging running maxima of
// disjoint column ranges with this rule in any order gives the same result as one left-to-right scan.
template <typename scalar_t>
C10_HOST_DEVICE inline bool beats(scalar_t value, int64_t index, scalar_t best_value, int64_t best_index) {
  if (index < 0) return false;
  if (best_index < 0) return true;
  const bool value_is_nan = value != value;
  const bool best_is_nan = best_value != best_value;
  if (value_is_nan || best_is_nan) {
    if (value_is_nan && best_is_nan) return index < best_index;
    return value_is_nan;
  }
  return value > best_value || (value == best_value && index < best_index);
}

template <typename scalar_t>
C10_HOST_DEVICE inline void keep(RunningMax<scalar_t>& best, scalar_t value, int64_t index) {
  if (beats(value, index, best.value, best.index)) {
    best.value = value;
    best.index = index;
  }
}

// Column `column` is a negative of anchor row `row` unless it is the anchor's own positive.
C10_HOST_DEVICE inline bool is_negative(int64_t row, int64_t column) { return row != column; }

}  // namespace hardest_negative
}  // namespace embedplug
