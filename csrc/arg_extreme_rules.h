// The one running arg-max / arg-min of the extension, shared by every kernel that picks an element
// (batch-hard, semi-hard, MegaBatchMargin's hardest negative) on both backends.
//
// Order: the larger (arg-max) or smaller (arg-min) value first, ties to the smaller index, as
// torch.max / torch.min return the first extreme. That is a total order on (value, index), so
// results merged in any order (threads, tiles, warps, CUB reductions) equal one left-to-right scan.
// An empty slot is (the neutral value, kNoIndex): any real candidate beats it, and as a candidate it
// never wins.
//
// NaN is a parameter, because the peers differ: sentence-transformers' batch mining masks and
// compares (a NaN distance never wins, kIgnore), while MegaBatchMarginLoss takes torch.max over a
// row, where a NaN wins and propagates (kPropagate; two NaNs tie, so the smaller index wins).
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>
#include <limits>

namespace embedplug {

inline constexpr int64_t kNoIndex = std::numeric_limits<int64_t>::max();

enum class NanPolicy { kIgnore, kPropagate };

template <typename scalar_t>
struct ArgExtreme {
  scalar_t value;
  int64_t index;
};

template <typename scalar_t>
C10_HOST_DEVICE inline ArgExtreme<scalar_t> empty_argmax() {
  return {-std::numeric_limits<scalar_t>::infinity(), kNoIndex};
}
template <typename scalar_t>
C10_HOST_DEVICE inline ArgExtreme<scalar_t> empty_argmin() {
  return {std::numeric_limits<scalar_t>::infinity(), kNoIndex};
}

// Whether (value, index) goes before `best`; `Larger` picks arg-max, otherwise arg-min.
template <NanPolicy Nan, bool Larger, typename scalar_t>
C10_HOST_DEVICE inline bool goes_before(scalar_t value, int64_t index, const ArgExtreme<scalar_t>& best) {
  if (Nan == NanPolicy::kPropagate) {
    const bool value_is_nan = value != value;
    const bool best_is_nan = best.value != best.value;
    if (value_is_nan || best_is_nan) return value_is_nan && (!best_is_nan || index < best.index);
  }
  const bool better = Larger ? value > best.value : value < best.value;
  return better || (value == best.value && index < best.index);
}

template <NanPolicy Nan = NanPolicy::kIgnore, typename scalar_t>
C10_HOST_DEVICE inline void keep_max(ArgExtreme<scalar_t>& best, scalar_t value, int64_t index) {
  if (goes_before<Nan, true>(value, index, best)) best = {value, index};
}
template <NanPolicy Nan = NanPolicy::kIgnore, typename scalar_t>
C10_HOST_DEVICE inline void keep_min(ArgExtreme<scalar_t>& best, scalar_t value, int64_t index) {
  if (goes_before<Nan, false>(value, index, best)) best = {value, index};
}
template <typename scalar_t>
C10_HOST_DEVICE inline bool is_set(const ArgExtreme<scalar_t>& best) {
  return best.index != kNoIndex;
}
// Binary merges, for reductions (cub::BlockReduce takes them as its operator).
template <NanPolicy Nan = NanPolicy::kIgnore, typename scalar_t>
C10_HOST_DEVICE inline ArgExtreme<scalar_t> merge_max(ArgExtreme<scalar_t> a, const ArgExtreme<scalar_t>& b) {
  keep_max<Nan>(a, b.value, b.index);
  return a;
}
template <NanPolicy Nan = NanPolicy::kIgnore, typename scalar_t>
C10_HOST_DEVICE inline ArgExtreme<scalar_t> merge_min(ArgExtreme<scalar_t> a, const ArgExtreme<scalar_t>& b) {
  keep_min<Nan>(a, b.value, b.index);
  return a;
}

}  // namespace embedplug
