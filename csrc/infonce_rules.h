// The per-entry and per-row rules of the masked in-batch softmax (InfoNCE) family — masked_infonce,
// _masked_infonce_backward and masked_infonce_mean, behind GISTEmbedLoss and
// MultipleNegativesRankingLoss — written once for both backends: every function is C10_HOST_DEVICE
// and inline, with no CUDA include and no std container, so g++ compiles it into the CPU kernels
// (csrc/cpu) and nvcc into the CUDA kernels (csrc/cuda). The CPU suite therefore runs the math the
// GPU runs; a rule changed here changes on both backends at once.
//
// Row i has anchor a_i and positive p_i; its softmax runs over up to four similarity blocks
// (SoftmaxBlock). An entry is dropped (logit -inf) when it is one of the row's own columns under
// exclude_self, or when guide filtering drops it: guide_sim(row, column) > threshold_i, threshold_i
// = t_i - margin (absolute) or t_i - |t_i| * margin (relative), t_i = guide_sim(a_i, p_i), strict >,
// and the pair (a_i, p_i) itself is never dropped. Kept entries have logit scale * similarity.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "rounding_rules.h"

namespace embedplug {
namespace infonce {

// ---------------------------------------------------------------------------------------------
// Column groups: which blocks a row's softmax runs over.

enum class MarginStrategy { kNone, kAbsolute, kRelative };

// One block of the softmax: rows are anchors (or positives), columns the first num_columns rows of
// anchors (or candidates).
struct SoftmaxBlock {
  bool rows_are_positives;
  bool columns_are_anchors;
  int64_t num_columns;
  // Column i of row i is the pair (a_i, p_i): the guide never drops it.
  bool column_i_is_target_pair;
  // exclude_self drops the row's own columns: j == i on anchors, j == i (mod N) on candidates.
  bool excludes_self;
};

// At most four blocks per row: <a_i, candidates>, then the optional anchor_anchor <a_i, anchors>,
// positive_anchor <p_i, anchors> and positive_candidate_columns <p_i, candidates[:K]> groups.
constexpr int kMaxSoftmaxBlocks = 4;

struct SoftmaxBlockList {
  SoftmaxBlock blocks[kMaxSoftmaxBlocks];
  int count;
};

// The blocks of every row, in the order their logits are concatenated (sentence-transformers'
// torch.cat order). n anchors, m candidates.
C10_HOST_DEVICE inline SoftmaxBlockList softmax_blocks(bool anchor_anchor, bool positive_anchor,
                                                       int64_t positive_candidate_columns, bool exclude_self,
                                                       int64_t n, int64_t m) {
  SoftmaxBlockList list{};
  list.count = 0;
  list.blocks[list.count++] = {false, false, m, true, false};
  if (anchor_anchor) list.blocks[list.count++] = {false, true, n, false, exclude_self};
  if (positive_anchor) list.blocks[list.count++] = {true, true, n, true, false};
  if (positive_candidate_columns > 0) {
    list.blocks[list.count++] = {true, false, positive_candidate_columns, false, exclude_self};
  }
  return list;
}

// Own columns of row i repeat every self_column_stride columns from column i: the anchors once
// (j == i), the candidates once per column of N (j == i mod N).
C10_HOST_DEVICE inline int64_t self_column_stride(const SoftmaxBlock& block, int64_t n) {
  return block.columns_are_anchors ? block.num_columns : n;
}

// Whether exclude_self drops entry (i, j) of the block (0 <= i < n).
C10_HOST_DEVICE inline bool is_self_column(const SoftmaxBlock& block, int64_t i, int64_t j, int64_t n) {
  return block.excludes_self && j % self_column_stride(block, n) == i;
}

// Whether entry (i, j) is the protected pair (a_i, p_i), which the guide never drops.
C10_HOST_DEVICE inline bool is_target_pair(const SoftmaxBlock& block, int64_t i, int64_t j) {
  return block.column_i_is_target_pair && j == i;
}

// ---------------------------------------------------------------------------------------------
// The GIST keep/drop predicate.

// The guide similarity used wherever a decision is a near tie, and for the thresholds t_i:
// exact_dot, a plain sequential dot product rounded the same on host and device
// (csrc/rounding_rules.h), so the CPU and the CUDA kernel decide a near tie identically. It is
// symmetric and deterministic, so identical rows (an anchor equal to its positive, duplicates in the
// batch) compare exactly as sentence-transformers compares them, whereas two GEMM calls may round
// the same pair differently.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t exact_dot(const scalar_t* x, const scalar_t* y, int64_t dim) {
  scalar_t sum = 0;
  for (int64_t k = 0; k < dim; ++k) sum = product_then_sum(sum, x[k], y[k]);
  return sum;
}

// threshold_i from t_i = exact guide_sim(a_i, p_i).
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t guide_threshold(MarginStrategy strategy, scalar_t target, scalar_t margin) {
  return strategy == MarginStrategy::kAbsolute ? target - margin : difference_of_product(target, std::abs(target), margin);
}

// A blocked GEMM's error on <x, y> is below dim * unit_roundoff * |x| |y|; 4x that
// (2 * dim * epsilon) is a safe band outside which the GEMM value decides a comparison the exact
// dot would decide the same way.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t gemm_relative_tolerance(int64_t dim) {
  return scalar_t(2) * static_cast<scalar_t>(dim) * std::numeric_limits<scalar_t>::epsilon();
}

// Half-width of the band around row i's threshold that covers every column of a block: the row's
// guide norm times the block's largest column norm.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t threshold_band(scalar_t relative_tolerance, scalar_t row_norm,
                                               scalar_t max_column_norm) {
  return relative_tolerance * row_norm * max_column_norm;
}

// The guide's verdict on one entry from its GEMM value: drop above the band, keep below it (and
// for NaN: a NaN guide value drops nothing, as in sentence-transformers' comparison), and
// decide by the exact dot product inside it.
enum class GuideVerdict { kKeep, kDrop, kNearThreshold };

template <typename scalar_t>
C10_HOST_DEVICE inline GuideVerdict guide_verdict(scalar_t guide_value, scalar_t lower, scalar_t upper) {
  if (guide_value > upper) return GuideVerdict::kDrop;
  return guide_value > lower ? GuideVerdict::kNearThreshold : GuideVerdict::kKeep;
}

// The verdict inside the band, from the exact guide similarity: strict >, as GIST drops.
template <typename scalar_t>
C10_HOST_DEVICE inline bool guide_keeps_exact(scalar_t exact_similarity, scalar_t threshold) {
  return !(exact_similarity > threshold);
}

template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t dropped_logit() {
  return -std::numeric_limits<scalar_t>::infinity();
}

// The logit of one entry, every rule above in one place (the CUDA epilogue's per-entry path; the
// CPU epilogue applies the same functions tile-wise). similarity: the student GEMM value;
// guide_value: the guide GEMM value (ignored unguided); [lower, upper]: the row's threshold band;
// exact_keeps(): the exact verdict, only evaluated inside the band.
template <typename scalar_t, typename ExactKeeps>
C10_HOST_DEVICE inline scalar_t masked_logit(const SoftmaxBlock& block, int64_t i, int64_t j, int64_t n,
                                             scalar_t scale, scalar_t similarity, bool guided,
                                             scalar_t guide_value, scalar_t lower, scalar_t upper,
                                             const ExactKeeps& exact_keeps) {
  if (is_self_column(block, i, j, n)) return dropped_logit<scalar_t>();
  if (guided && !is_target_pair(block, i, j)) {
    const GuideVerdict verdict = guide_verdict(guide_value, lower, upper);
    if (verdict == GuideVerdict::kDrop) return dropped_logit<scalar_t>();
    if (verdict == GuideVerdict::kNearThreshold && !exact_keeps()) return dropped_logit<scalar_t>();
  }
  return scale * similarity;
}

// ---------------------------------------------------------------------------------------------
// exp and the online log-sum-exp.

// Smallest argument whose exp is still a normal number: below it exp is exactly 0 here (to working
// precision it is, next to a row sum >= 1; ATen's vectorised exp leaves its fast path there).
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t exp_underflow_cutoff() {
  return sizeof(scalar_t) == sizeof(float) ? scalar_t(-87.0) : scalar_t(-708.0);
}

// exp of a shifted logit (<= 0 up to rounding, -inf where dropped); NaN stays NaN.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t exp_or_zero(scalar_t shifted) {
  return shifted < exp_underflow_cutoff<scalar_t>() ? scalar_t(0) : std::exp(shifted);
}

// The shift a two-pass softmax runs exp at for row maximum row_max: -row_max, or 0 for a row whose
// entries are all dropped (exp(-inf) stays 0). NaN stays NaN and poisons the row.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t softmax_shift(scalar_t row_max) {
  return row_max == -std::numeric_limits<scalar_t>::infinity() ? scalar_t(0) : -row_max;
}

// Online log-sum-exp of one row (KeOps / flash-attention style): running maximum and the sum of
// exp(logit - maximum). This is the one online log-sum-exp of the extension: every kernel that
// merges softmax partials (a tile's, a thread's, a CUB reduction's) goes through raise_maximum and
// merge, so CPU and CUDA share the rescaling and its NaN policy. NaN logits do not move the maximum
// but are remembered, and poison the value.
template <typename scalar_t>
struct RunningLogSumExp {
  scalar_t maximum;
  scalar_t sum;
  bool saw_nan;

  C10_HOST_DEVICE static RunningLogSumExp empty() {
    return {-std::numeric_limits<scalar_t>::infinity(), scalar_t(0), false};
  }

  // A partial state of a set of logits: their maximum and sum exp(logit - maximum).
  C10_HOST_DEVICE static RunningLogSumExp of(scalar_t maximum, scalar_t sum) { return {maximum, sum, false}; }

  // Raises the maximum to candidate_maximum (if larger; a NaN never is, and is remembered),
  // rescaling the sum, and returns the shift the new terms' exp runs at (softmax_shift). While
  // nothing was kept the sum is 0 and its factor exp(-inf) is 0 too.
  C10_HOST_DEVICE scalar_t raise_maximum(scalar_t candidate_maximum) {
    saw_nan |= candidate_maximum != candidate_maximum;
    if (candidate_maximum > maximum) {
      sum *= std::exp(maximum - candidate_maximum);
      maximum = candidate_maximum;
    }
    return softmax_shift(maximum);
  }

  // Adds sum of exp(logit + shift) for the shift raise_maximum returned.
  C10_HOST_DEVICE void add(scalar_t shifted_exp_sum) { sum += shifted_exp_sum; }

  // Folds another partial state in: a tile's, a thread's, or (CUB) a block reduction's operand.
  // An empty other (maximum -inf) adds other.sum * exp(-inf) = 0.
  C10_HOST_DEVICE void merge(const RunningLogSumExp& other) {
    saw_nan |= other.saw_nan;
    const scalar_t shift = raise_maximum(other.maximum);
    add(other.sum * exp_or_zero(other.maximum + shift));
  }

  // Folds one logit in: the merge of the one-logit state (logit, 1). The CUDA epilogues fold their
  // columns one by one; the CPU appends MultiSimilarity's zero logit (PML's add_one) this way.
  C10_HOST_DEVICE void add_logit(scalar_t logit) { merge(of(logit, scalar_t(1))); }

  // The row's maximum as an amax over its logits gives it (NaN propagates).
  C10_HOST_DEVICE scalar_t nan_propagating_maximum() const {
    return saw_nan ? std::numeric_limits<scalar_t>::quiet_NaN() : maximum;
  }

  C10_HOST_DEVICE scalar_t value() const {
    if (saw_nan) return std::numeric_limits<scalar_t>::quiet_NaN();
    return maximum + std::log(sum);
  }
};

}  // namespace infonce
}  // namespace embedplug
