// What the CPU's label-aware tile passes need besides the Gram tiles (csrc/cpu/pairwise_tiles.h):
// the tile size, labels as dense int32 class ids, and ATen's vectorised exp over a buffer.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace embedplug {
namespace cpu {

// Gram tiles of 256 x 256 (256 KiB in fp32) stay in L2 while the epilogue reads them; small batches
// get smaller tiles so that both threads have tiles to work on.
inline int64_t label_tile_size(int64_t n) {
  const int64_t per_side = (n + 7) / 8;
  return std::clamp<int64_t>((per_side + 15) / 16 * 16, 32, 256);
}

// Labels as dense int32 class ids: the label test in the tile loops then vectorises (no 64-bit
// compares in SSE2).
struct LabelClasses {
  std::vector<int32_t> ids;

  LabelClasses(const int64_t* labels, int64_t n) : ids(n) {
    std::vector<int64_t> sorted(labels, labels + n);
    std::sort(sorted.begin(), sorted.end());
    sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
    for (int64_t i = 0; i < n; ++i) {
      ids[i] = static_cast<int32_t>(std::lower_bound(sorted.begin(), sorted.end(), labels[i]) - sorted.begin());
    }
  }
};

// exp over a buffer through ATen's vectorised kernel (its fast path needs inputs above the
// underflow cutoff, which the callers clamp to).
template <typename scalar_t>
void exp_in_place(scalar_t* values, int64_t entries) {
  at::from_blob(values, {entries}, at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value)).exp_();
}

}  // namespace cpu
}  // namespace embedplug
