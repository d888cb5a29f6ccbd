// Per-element and per-row rules of the label-aware contrastive losses (SupCon, MultiSimilarity with
// and without the MultiSimilarityMiner, Circle), shared by the CPU kernel (csrc/cpu) and the CUDA
// kernel (csrc/cuda): host/device functions, no CUDA includes, no std containers.
//
// A row is anchor i against every column j of the batch, s_ij its cosine similarity (on rows
// normalised as torch.nn.functional.normalize does). Columns split into positives (same label,
// j != i) and negatives (other label); each loss keeps some of them and runs one log-sum-exp over
// a group of kept columns (SupCon: positives and negatives together; MultiSimilarity and Circle:
// one over the positives, one over the negatives). The CUDA kernel evaluates a row in four sweeps
// over its columns, each a block reduce:
//   1. scan_column: pair counts, row maximum, the miner's hardest positive / negative, non-finite;
//   2. column_group + column_logit: the maximum logit of each group;
//   3. the sum of exp(logit - group maximum) per group (and SupCon's sum of positive logits);
//   4. finish_row, then column_weight: d loss_i / d s_ij for every column.
// The CPU kernel (csrc/cpu/labelled_contrastive_tiles.h) visits each unordered pair once per pass
// and merges per-tile maxima and exp sums online; it applies the same predicates and logits
// (keeps_positive / keeps_negative, unshifted_logit, logit_slope) and the same finish_row.
// The formulas, their evaluation order and PyTorch-metric-learning 2.9's conventions (its logsumexp
// with add_one, Softplus's threshold, AvgNonZero's "loss > 0" taken in exact arithmetic) are reproduced so that float32
// results equal PML's to rounding.
#pragma once

#include <c10/macros/Macros.h>

#include <math.h>

#include <cstdint>
#include <limits>

namespace embedplug {
namespace rules {

enum class ContrastiveLoss : int32_t { kSupCon = 0, kMultiSimilarity = 1, kCircle = 2 };

// Which group a column's logit enters.
enum ColumnGroup : int32_t { kNoGroup = -1, kPositiveGroup = 0, kNegativeGroup = 1 };

template <typename scalar_t>
struct ContrastiveParams {
  ContrastiveLoss loss;
  // SupCon: temperature. MultiSimilarity: alpha, beta, base. Circle: m, gamma.
  scalar_t temperature, alpha, beta, base, m, gamma;
  bool mine;          // MultiSimilarity only: keep the pairs MultiSimilarityMiner(epsilon) picks
  scalar_t epsilon;
};

C10_HOST_DEVICE inline float rule_exp(float x) { return ::expf(x); }
C10_HOST_DEVICE inline double rule_exp(double x) { return ::exp(x); }
C10_HOST_DEVICE inline float rule_log(float x) { return ::logf(x); }
C10_HOST_DEVICE inline double rule_log(double x) { return ::log(x); }
C10_HOST_DEVICE inline float rule_log1p(float x) { return ::log1pf(x); }
C10_HOST_DEVICE inline double rule_log1p(double x) { return ::log1p(x); }

template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t rule_infinity() {
  return std::numeric_limits<scalar_t>::infinity();
}

template <typename scalar_t>
C10_HOST_DEVICE inline bool rule_is_finite(scalar_t x) {
  return x - x == scalar_t(0);  // false for NaN and +-inf, true otherwise (no <cmath> on device)
}

template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t rule_max(scalar_t a, scalar_t b) {
  return a < b ? b : a;
}
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t rule_min(scalar_t a, scalar_t b) {
  return b < a ? b : a;
}
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t rule_relu(scalar_t x) {
  return x > scalar_t(0) ? x : scalar_t(0);
}

// Sweep 1: what the row's columns say before any logit is formed.
template <typename scalar_t>
struct RowScan {
  int64_t positives = 0, negatives = 0;
  bool non_finite = false;
  scalar_t maximum = -rule_infinity<scalar_t>();           // over every column, the anchor's own too
  scalar_t hardest_negative = -rule_infinity<scalar_t>();  // largest negative similarity
  scalar_t hardest_positive = rule_infinity<scalar_t>();   // smallest positive similarity
};

template <typename scalar_t>
C10_HOST_DEVICE inline void scan_column(RowScan<scalar_t>& scan, scalar_t s, bool is_self, bool same_label) {
  scan.non_finite |= !rule_is_finite(s);
  scan.maximum = rule_max(scan.maximum, s);
  if (is_self) return;
  if (same_label) {
    ++scan.positives;
    scan.hardest_positive = rule_min(scan.hardest_positive, s);
  } else {
    ++scan.negatives;
    scan.hardest_negative = rule_max(scan.hardest_negative, s);
  }
}

template <typename scalar_t>
C10_HOST_DEVICE inline RowScan<scalar_t> merge_scans(const RowScan<scalar_t>& a, const RowScan<scalar_t>& b) {
  RowScan<scalar_t> out;
  out.positives = a.positives + b.positives;
  out.negatives = a.negatives + b.negatives;
  out.non_finite = a.non_finite || b.non_finite;
  out.maximum = rule_max(a.maximum, b.maximum);
  out.hardest_negative = rule_max(a.hardest_negative, b.hardest_negative);
  out.hardest_positive = rule_min(a.hardest_positive, b.hardest_positive);
  return out;
}

// MultiSimilarityMiner (similarity, so "inverted") keeps a positive p when s_ip - epsilon < max_n
// s_in and a negative n when s_in + epsilon > min_p s_ip, comparing in the tensor's dtype; an anchor
// without negatives keeps no positive and one without positives no negative (the infinities of its
// sort sentinels). Without the miner every pair is kept.
template <typename scalar_t>
C10_HOST_DEVICE inline bool keeps_positive(const ContrastiveParams<scalar_t>& p, scalar_t hardest_negative, scalar_t s) {
  return !p.mine || (s - p.epsilon) < hardest_negative;
}
template <typename scalar_t>
C10_HOST_DEVICE inline bool keeps_negative(const ContrastiveParams<scalar_t>& p, scalar_t hardest_positive, scalar_t s) {
  return !p.mine || (s + p.epsilon) > hardest_positive;
}

// The group a column enters (kNoGroup: left out).
template <typename scalar_t>
C10_HOST_DEVICE inline int32_t column_group(const ContrastiveParams<scalar_t>& p, const RowScan<scalar_t>& scan,
                                            scalar_t s, bool is_self, bool same_label) {
  if (is_self) return kNoGroup;
  if (p.loss == ContrastiveLoss::kSupCon) return kNegativeGroup;  // one softmax over every other column
  if (same_label) return keeps_positive(p, scan.hardest_negative, s) ? kPositiveGroup : kNoGroup;
  return keeps_negative(p, scan.hardest_positive, s) ? kNegativeGroup : kNoGroup;
}

// The logit of a column in `group` before any row-dependent shift:
//   SupCon: s / T
//   MultiSimilarity: alpha * (base - s) for positives, beta * (s - base) for negatives
//   Circle: (-gamma * relu(1 + m - s)) * (s - (1 - m)) for positives,
//           (gamma * relu(s + m)) * (s - m) for negatives (relu factors detached)
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t unshifted_logit(const ContrastiveParams<scalar_t>& p, scalar_t s, int32_t group) {
  switch (p.loss) {
    case ContrastiveLoss::kSupCon:
      return s / p.temperature;
    case ContrastiveLoss::kMultiSimilarity:
      return group == kPositiveGroup ? p.alpha * (p.base - s) : p.beta * (s - p.base);
    case ContrastiveLoss::kCircle:
    default:
      if (group == kPositiveGroup) return (-p.gamma * rule_relu((scalar_t(1) + p.m) - s)) * (s - (scalar_t(1) - p.m));
      return (p.gamma * rule_relu(s - (-p.m))) * (s - p.m);
  }
}

// The logit a column contributes to its group, in PML's evaluation order: SupCon subtracts the
// row's maximum s_ij / T "for numerical stability" (it cancels in the softmax, so a kernel that
// runs an online log-sum-exp may use unshifted_logit throughout); the others are unshifted.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t column_logit(const ContrastiveParams<scalar_t>& p, const RowScan<scalar_t>& scan,
                                             scalar_t s, int32_t group) {
  if (p.loss == ContrastiveLoss::kSupCon) return s / p.temperature - scan.maximum / p.temperature;
  return unshifted_logit(p, s, group);
}

// d logit / d s with the detached factors held constant.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t logit_slope(const ContrastiveParams<scalar_t>& p, scalar_t s, int32_t group) {
  switch (p.loss) {
    case ContrastiveLoss::kSupCon:
      return scalar_t(1) / p.temperature;
    case ContrastiveLoss::kMultiSimilarity:
      return group == kPositiveGroup ? -p.alpha : p.beta;
    case ContrastiveLoss::kCircle:
    default:
      if (group == kPositiveGroup) return -p.gamma * rule_relu((scalar_t(1) + p.m) - s);
      return p.gamma * rule_relu(s - (-p.m));
  }
}

// Sweeps 2 and 3, per group: the largest logit, then sum exp(logit - maximum); plus the count of
// kept columns and (SupCon) the sum of the positives' logits.
template <typename scalar_t>
struct GroupSums {
  scalar_t maximum[2] = {-rule_infinity<scalar_t>(), -rule_infinity<scalar_t>()};
  scalar_t exp_sum[2] = {scalar_t(0), scalar_t(0)};
  int64_t kept[2] = {0, 0};
  scalar_t positive_logit_sum = scalar_t(0);
};

// MultiSimilarity's logsumexp appends a zero logit (PML's add_one): it enters every group's maximum.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t group_maximum_start(const ContrastiveParams<scalar_t>& p) {
  return p.loss == ContrastiveLoss::kMultiSimilarity ? scalar_t(0) : -rule_infinity<scalar_t>();
}

// The exp-sum a group starts from: MultiSimilarity's appended zero logit, exp(0 - maximum).
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t group_sum_start(const ContrastiveParams<scalar_t>& p, scalar_t maximum) {
  return p.loss == ContrastiveLoss::kMultiSimilarity ? rule_exp(-maximum) : scalar_t(0);
}

// exp(logit - maximum) of a column, 0 for a group whose maximum is -inf (nothing kept).
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t shifted_exp(scalar_t logit, scalar_t maximum) {
  return maximum == -rule_infinity<scalar_t>() ? scalar_t(0) : rule_exp(logit - maximum);
}

// What a finished row gives: its loss (PML's per-element loss before reduction), the counts of
// the pairs it used, and the gradient coefficients: d loss / d s_ij =
//   coefficient[g] * exp(logit_ij - maximum[g]) * logit_slope(s_ij, g) + positive_offset [j positive].
template <typename scalar_t>
struct RowResult {
  scalar_t loss = scalar_t(0);
  int64_t positive_pairs = 0, negative_pairs = 0;
  scalar_t coefficient[2] = {scalar_t(0), scalar_t(0)};
  scalar_t positive_offset = scalar_t(0);
};

// torch.nn.Softplus(beta=1, threshold=20) and its derivative, as ATen evaluates them.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t softplus(scalar_t x) {
  return x > scalar_t(20) ? x : rule_log1p(rule_exp(x));
}
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t softplus_slope(scalar_t x) {
  if (x > scalar_t(20)) return scalar_t(1);
  const scalar_t z = rule_exp(x);
  return z / (z + scalar_t(1));
}

template <typename scalar_t>
C10_HOST_DEVICE inline RowResult<scalar_t> finish_row(const ContrastiveParams<scalar_t>& p, const RowScan<scalar_t>& scan,
                                                      const GroupSums<scalar_t>& sums) {
  RowResult<scalar_t> out;
  const scalar_t nan = std::numeric_limits<scalar_t>::quiet_NaN();
  if (p.loss == ContrastiveLoss::kSupCon) {
    out.positive_pairs = scan.positives;
    out.negative_pairs = scan.negatives;
    if (scan.non_finite) {
      out.loss = nan;
      out.coefficient[kNegativeGroup] = nan;
      return out;
    }
    if (scan.positives == 0) return out;  // PML: -(0 / tiny), filtered out by AvgNonZeroReducer
    const scalar_t log_normalizer = sums.maximum[kNegativeGroup] + rule_log(sums.exp_sum[kNegativeGroup]);
    // PML divides by (count + finfo.tiny); the tiny term vanishes next to a count >= 1.
    const scalar_t count = static_cast<scalar_t>(scan.positives) + std::numeric_limits<scalar_t>::min();
    out.loss = -(sums.positive_logit_sum - static_cast<scalar_t>(scan.positives) * log_normalizer) / count;
    out.coefficient[kNegativeGroup] = scalar_t(1) / sums.exp_sum[kNegativeGroup];
    out.positive_offset = -(scalar_t(1) / p.temperature) / count;
    return out;
  }
  out.positive_pairs = sums.kept[kPositiveGroup];
  out.negative_pairs = sums.kept[kNegativeGroup];
  if (scan.non_finite) {
    out.loss = nan;
    out.coefficient[kPositiveGroup] = out.coefficient[kNegativeGroup] = nan;
    return out;
  }
  if (p.loss == ContrastiveLoss::kMultiSimilarity) {
    // (1 / alpha) logsumexp([alpha (base - s_p)..., 0]) + (1 / beta) logsumexp([beta (s_n - base)..., 0]).
    const scalar_t positive_lse = sums.maximum[kPositiveGroup] + rule_log(sums.exp_sum[kPositiveGroup]);
    const scalar_t negative_lse = sums.maximum[kNegativeGroup] + rule_log(sums.exp_sum[kNegativeGroup]);
    out.loss = (scalar_t(1) / p.alpha) * positive_lse + (scalar_t(1) / p.beta) * negative_lse;
    out.coefficient[kPositiveGroup] = (scalar_t(1) / p.alpha) / sums.exp_sum[kPositiveGroup];
    out.coefficient[kNegativeGroup] = (scalar_t(1) / p.beta) / sums.exp_sum[kNegativeGroup];
    return out;
  }
  // Circle: softplus(lse_p + lse_n), zero for an anchor without a positive or a negative.
  if (scan.positives == 0 || scan.negatives == 0) return out;
  const scalar_t z = (sums.maximum[kPositiveGroup] + rule_log(sums.exp_sum[kPositiveGroup])) +
                     (sums.maximum[kNegativeGroup] + rule_log(sums.exp_sum[kNegativeGroup]));
  out.loss = softplus(z);
  const scalar_t slope = softplus_slope(z);
  out.coefficient[kPositiveGroup] = slope / sums.exp_sum[kPositiveGroup];
  out.coefficient[kNegativeGroup] = slope / sums.exp_sum[kNegativeGroup];
  return out;
}

// d loss_i / d s_ij for one column with logit `logit` (0 for a column in no group). NaN
// coefficients poison the row.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t column_weight(const ContrastiveParams<scalar_t>& p, const RowResult<scalar_t>& row,
                                              const GroupSums<scalar_t>& sums, scalar_t s, scalar_t logit,
                                              bool same_label, int32_t group) {
  if (group == kNoGroup) return scalar_t(0);
  const scalar_t weight = row.coefficient[group] * shifted_exp(logit, sums.maximum[group]) * logit_slope(p, s, group);
  return same_label ? weight + row.positive_offset : weight;
}

// Whether the reducer counts anchor i. AvgNonZeroReducer averages over the losses that are > 0; the
// decision is taken on the exact value, which the pair counts settle, never on a float32 result that
// rounded a tiny positive loss to 0 (that would rescale the whole batch's gradient):
//   SupCon: -mean_p log softmax[p] > 0 exactly when the softmax has a second column besides p;
//   Circle: softplus(.) > 0 for every anchor with a positive and a negative (others are masked to 0);
//   MultiSimilarity: MeanReducer counts every anchor.
// NaN is counted, so that bad input poisons the mean instead of silently shrinking the batch.
template <typename scalar_t>
C10_HOST_DEVICE inline bool counted_by_reducer(const ContrastiveParams<scalar_t>& p, int64_t positive_pairs,
                                               int64_t negative_pairs, scalar_t loss) {
  if (loss != loss) return true;
  switch (p.loss) {
    case ContrastiveLoss::kMultiSimilarity:
      return true;
    case ContrastiveLoss::kSupCon:
      return positive_pairs >= 1 && positive_pairs + negative_pairs >= 2;
    case ContrastiveLoss::kCircle:
    default:
      return positive_pairs >= 1 && negative_pairs >= 1;
  }
}

}  // namespace rules
}  // namespace embedplug
