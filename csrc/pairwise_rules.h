// The per-element and per-row rules of the batch-mining family (batch-hard, batch-all,
// semi-hard), written once for both backends: every function is C10_HOST_DEVICE and inline, with
// no CUDA include and no std container, so g++ compiles it into the CPU kernels (csrc/cpu) and
// nvcc into the CUDA kernels (csrc/cuda). The CPU suite therefore runs every line of math the GPU
// runs; a rule changed here changes on both backends at once.
//
// The rules follow sentence-transformers 6.2 (BatchHardTripletLoss, BatchAllTripletLoss,
// BatchSemiHardTripletLoss) operation by operation, so that float rounding matches its own.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "arg_extreme_rules.h"

namespace embedplug {

enum class DistanceKind { kEuclidean, kSquaredEuclidean, kCosine };

// torch.nn.functional.normalize's eps: rows are divided by max(||x||, eps).
inline constexpr double kNormalizeEps = 1e-12;

// ---------------------------------------------------------------------------------------------
// Distance finishing: Gram value (and squared norms) -> distance.

// Cosine distance on unit rows: 1 - <u_a, u_b> (ST's 1 - cos_sim).
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t cosine_distance(scalar_t gram) {
  return scalar_t(1) - gram;
}

// ST's squared euclidean distance, in its evaluation order, clamped at 0 because rounding can
// make it negative. NaN stays NaN (the comparison is false) so bad input poisons the loss.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t clamped_squared_distance(scalar_t gram, scalar_t squared_norm_row,
                                                         scalar_t squared_norm_col) {
  const scalar_t squared = (squared_norm_col - scalar_t(2) * gram) + squared_norm_row;
  return squared < scalar_t(0) ? scalar_t(0) : squared;
}

// Euclidean distance from the clamped squared one. ST masks sqrt at 0 (its gradient would be
// infinite); the value sqrt(0) is 0 already, so the value needs no branch (the CPU loops rely on
// that to vectorise), only the gradient does (pair_coefficient).
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t euclidean_from_squared(scalar_t squared) {
  return std::sqrt(squared);
}

template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t finish_distance(DistanceKind kind, scalar_t gram, scalar_t squared_norm_row,
                                                scalar_t squared_norm_col) {
  if (kind == DistanceKind::kCosine) return cosine_distance(gram);
  const scalar_t squared = clamped_squared_distance(gram, squared_norm_row, squared_norm_col);
  if (kind == DistanceKind::kSquaredEuclidean) return squared;
  return euclidean_from_squared(squared);
}

// ST takes the euclidean kinds' squared norms from the Gram diagonal, which makes d(a, a)
// exactly 0; its cosine distance keeps 1 - <u_a, u_a> as computed.
C10_HOST_DEVICE inline bool self_distance_is_zero(DistanceKind kind) { return kind != DistanceKind::kCosine; }

// finish_distance for entry (row, column) of the distance matrix, with the diagonal rule.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t finish_distance_entry(DistanceKind kind, scalar_t gram, scalar_t squared_norm_row,
                                                      scalar_t squared_norm_col, int64_t row, int64_t column) {
  if (row == column && self_distance_is_zero(kind)) return scalar_t(0);
  return finish_distance(kind, gram, squared_norm_row, squared_norm_col);
}

// NaN or +-Inf. Written as a comparison so that an OR over a row vectorises.
template <typename scalar_t>
C10_HOST_DEVICE inline bool is_non_finite(scalar_t value) {
  return !(std::abs(value) <= std::numeric_limits<scalar_t>::max());
}

// ---------------------------------------------------------------------------------------------
// Label masks (ST's get_anchor_positive_triplet_mask / get_anchor_negative_triplet_mask).

C10_HOST_DEVICE inline bool is_negative_pair(int64_t label_anchor, int64_t label_column) {
  return label_anchor != label_column;
}

// ---------------------------------------------------------------------------------------------
// Batch-hard mining. Per anchor, ST needs
//   hardest positive = max_j mask_pos[a,j] * d[a,j]
//   hardest negative = min_j (d[a,j] + rowmax_a * (1 - mask_neg[a,j]))
// A same-label column can win the second (always, without negatives); the gradient then reaches
// that column and the row maximum. Four running arg-extremes per row reproduce it exactly.

template <typename scalar_t>
struct BatchHardRowState {
  ArgExtreme<scalar_t> hardest_positive;
  ArgExtreme<scalar_t> nearest_negative;
  ArgExtreme<scalar_t> nearest_same_label;
  ArgExtreme<scalar_t> row_max;
  bool non_finite;

  C10_HOST_DEVICE static BatchHardRowState empty() {
    return {empty_argmax<scalar_t>(), empty_argmin<scalar_t>(), empty_argmin<scalar_t>(), empty_argmax<scalar_t>(),
            false};
  }

  C10_HOST_DEVICE inline void update(scalar_t distance, int64_t column, bool same_label, bool is_anchor) {
    // ST turns any NaN/Inf in a row into a NaN loss (0 * inf, inf - inf); remember it.
    non_finite |= is_non_finite(distance);
    keep_max(row_max, distance, column);
    if (same_label) {
      keep_min(nearest_same_label, distance, column);
      if (!is_anchor) keep_max(hardest_positive, distance, column);
    } else {
      keep_min(nearest_negative, distance, column);
    }
  }

  C10_HOST_DEVICE inline void merge(const BatchHardRowState& other) {
    non_finite |= other.non_finite;
    row_max = merge_max(row_max, other.row_max);
    nearest_same_label = merge_min(nearest_same_label, other.nearest_same_label);
    hardest_positive = merge_max(hardest_positive, other.hardest_positive);
    nearest_negative = merge_min(nearest_negative, other.nearest_negative);
  }
};

// Row a's outputs from its merged state: distances[3], indices[3] (index -1 = unused slot).
template <typename scalar_t>
C10_HOST_DEVICE inline void resolve_batch_hard(const BatchHardRowState<scalar_t>& row, int64_t anchor,
                                               scalar_t* distances, int64_t* indices) {
  if (row.non_finite) {
    const scalar_t nan = std::numeric_limits<scalar_t>::quiet_NaN();
    distances[0] = distances[1] = distances[2] = nan;
    indices[0] = indices[1] = anchor;  // lets the backward poison this anchor's gradient
    indices[2] = -1;
    return;
  }
  // Non-positive columns contribute 0 to ST's masked max, so a hardest positive <= 0 (or none)
  // yields 0 with no gradient path.
  if (is_set(row.hardest_positive) && row.hardest_positive.value > scalar_t(0)) {
    distances[0] = row.hardest_positive.value;
    indices[0] = row.hardest_positive.index;
  } else {
    distances[0] = scalar_t(0);
    indices[0] = -1;
  }
  const scalar_t same_label_candidate = row.nearest_same_label.value + row.row_max.value;
  const bool negative_wins = is_set(row.nearest_negative) &&
                             (row.nearest_negative.value < same_label_candidate ||
                              (row.nearest_negative.value == same_label_candidate &&
                               row.nearest_negative.index < row.nearest_same_label.index));
  if (negative_wins) {
    distances[1] = row.nearest_negative.value;
    indices[1] = row.nearest_negative.index;
    distances[2] = scalar_t(0);
    indices[2] = -1;
  } else {
    distances[1] = row.nearest_same_label.value;
    indices[1] = row.nearest_same_label.index;
    distances[2] = row.row_max.value;
    indices[2] = row.row_max.index;
  }
}

// Gradient of one mined pair d(a, b) scaled by `grad`, euclidean kinds: row a gets
// coefficient * (x_a - x_b), row b its negative. A zero (or clamped) distance has zero gradient
// in ST.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t mined_pair_coefficient(DistanceKind kind, scalar_t grad, scalar_t distance) {
  if (distance == scalar_t(0)) return scalar_t(0);
  return kind == DistanceKind::kSquaredEuclidean ? scalar_t(2) * grad : grad / distance;
}

// Cosine: d = 1 - <u_a, u_b>, u = x / max(||x||, eps). Row a's gradient component t is
// scale * (u_b[t] - cos * u_a[t]) with scale = -grad / max(||x_a||, eps); below eps normalize
// divides by a constant, so there is no projection term.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t cosine_pair_scale(scalar_t grad, scalar_t norm_self) {
  const scalar_t eps = static_cast<scalar_t>(kNormalizeEps);
  return -grad / (norm_self < eps ? eps : norm_self);  // std::max's rule, NaN norms included
}
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t cosine_pair_term(scalar_t scale, scalar_t norm_self, scalar_t unit_self,
                                                 scalar_t unit_other, scalar_t cosine) {
  const bool projected = norm_self >= static_cast<scalar_t>(kNormalizeEps);
  return scale * (projected ? unit_other - cosine * unit_self : unit_other);
}

// ---------------------------------------------------------------------------------------------
// Triplets (batch-all, semi-hard): t = (d_ap - d_an) + margin in ST's evaluation order.

// ST counts a batch-all triplet as active when its loss exceeds this.
inline constexpr double kActiveTripletThreshold = 1e-16;

template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t triplet_value(scalar_t positive, scalar_t negative, scalar_t margin) {
  return (positive - negative) + margin;
}
// Batch-all keeps t >= 0 (its relu; a kept triplet carries gradient) ...
template <typename scalar_t>
C10_HOST_DEVICE inline bool triplet_kept(scalar_t t) {
  return t >= scalar_t(0);
}
// ... adds max(t, 0) to the loss ...
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t triplet_hinge(scalar_t t) {
  return t > scalar_t(0) ? t : scalar_t(0);
}
// ... and counts t > 1e-16 in the denominator.
template <typename scalar_t>
C10_HOST_DEVICE inline bool triplet_active(scalar_t t) {
  return t > static_cast<scalar_t>(kActiveTripletThreshold);
}
// Batch-all's pair weights for an incoming per-anchor gradient g: W[a, p] = g * #{n: kept(p, n)},
// W[a, n] = -g * #{p: kept(p, n)}.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t batch_all_positive_weight(scalar_t grad, int64_t kept_negatives) {
  return grad * static_cast<scalar_t>(kept_negatives);
}
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t batch_all_negative_weight(scalar_t grad, int64_t kept_positives) {
  return -grad * static_cast<scalar_t>(kept_positives);
}

// d max(t, 0) / dt with torch.maximum's half-half split at t == 0 (NaN stays NaN): semi-hard.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t hinge_slope(scalar_t t) {
  if (t > scalar_t(0)) return scalar_t(1);
  if (t == scalar_t(0)) return scalar_t(0.5);
  return t != t ? t : scalar_t(0);
}

// Semi-hard: the negative for pair (a, p) is the smallest negative distance strictly above d_ap,
// the first column on ties (ST's stable sort): a keep_min over the columns that pass this test.
template <typename scalar_t>
C10_HOST_DEVICE inline bool is_semi_hard_candidate(scalar_t negative, scalar_t positive) {
  return negative > positive;
}

// Without a semi-hard negative ST uses the row's masked maximum max_j ((d_aj - m) * neg_j) + m,
// m the row minimum. `negative_max` is the arg-max of d_aj - m over the negatives (first index on
// ties). Every same-label column scores exactly 0, the first of them being the class's smallest
// index `first_same_label`, so the gradient reaches the arg-max negative when it scores above 0 or
// comes first, and the row's arg-min column otherwise (also without negatives).
template <typename scalar_t>
struct SemiHardFallback {
  scalar_t distance;
  int64_t column;
};
template <typename scalar_t>
C10_HOST_DEVICE inline SemiHardFallback<scalar_t> semi_hard_fallback(const ArgExtreme<scalar_t>& row_min,
                                                                    const ArgExtreme<scalar_t>& negative_max,
                                                                    int64_t first_same_label) {
  SemiHardFallback<scalar_t> fallback{row_min.value, row_min.index};
  if (is_set(negative_max)) {
    fallback.distance = negative_max.value + row_min.value;
    if (negative_max.value > scalar_t(0) || negative_max.index < first_same_label) fallback.column = negative_max.index;
  }
  return fallback;
}

// ---------------------------------------------------------------------------------------------
// Pair weights -> gradient coefficients (gradient of sum_{a,j} W[a,j] d(a,j), see
// pair_weight_gradient): the GEMM coefficient of weight w on a pair at distance d ...
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t pair_coefficient(DistanceKind kind, scalar_t w, scalar_t d) {
  if (kind == DistanceKind::kCosine) return w;
  if (kind == DistanceKind::kSquaredEuclidean) return scalar_t(2) * w;
  // A zero distance has zero gradient in ST; a NaN weight must still reach the output.
  return d > scalar_t(0) ? w / d : (w != w ? w : scalar_t(0));
}
// ... and the term it adds to the coefficient of the pair's own rows (x_a in x_a - x_j; the
// projection of u_a for cosine), from the coefficient itself.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t pair_self_term(DistanceKind kind, scalar_t coefficient, scalar_t d) {
  if (kind == DistanceKind::kCosine) return coefficient == scalar_t(0) ? scalar_t(0) : coefficient * (scalar_t(1) - d);
  return coefficient;
}

}  // namespace embedplug
