// Per-pair and per-row rules of the label-aware contrastive losses (SupCon, MultiSimilarity with
// and without the MultiSimilarityMiner, Circle), shared by the CPU kernel (csrc/cpu) and the CUDA
// kernel (csrc/cuda): host/device functions, no CUDA includes, no std containers.
//
// A row is anchor i against every column j of the batch, s_ij its cosine similarity (on rows
// normalised as torch.nn.functional.normalize does). Columns split into positives (same label,
// j != i) and negatives (other label); each loss keeps some of them (PairRule::keeps) and runs one
// log-sum-exp over a group of kept columns (SupCon: positives and negatives together;
// MultiSimilarity and Circle: one over the positives, one over the negatives).
//
// Both backends run the same algorithm over upper-triangular Gram tiles (CPU: square tiles,
// csrc/cpu/labelled_contrastive_tiles.h; CUDA: a band of rows against every later column,
// csrc/cuda/labelled_contrastive_kernel.cu): each unordered pair is computed once per pass and feeds
// both of its rows. Passes: the miner's thresholds (with the miner only); per row and group an
// online log-sum-exp of the kept logits (infonce::RunningLogSumExp), kept counts and SupCon's
// positive-logit sum; finish_anchor; then the gradient pass, where pair_gradient gives
// W[a, j] = w_a d loss_a / d s_aj and one symmetric M = W + W^T per tile meets the unit rows in GEMMs.
// The formulas, their evaluation order and PyTorch-metric-learning 2.9's conventions (its logsumexp
// with add_one, Softplus's threshold, AvgNonZero's "loss > 0" taken in exact arithmetic) are
// reproduced so that float32 results equal PML's to rounding.
#pragma once

#include <c10/macros/Macros.h>

#include "infonce_rules.h"

#include <math.h>

#include <cstdint>
#include <limits>

namespace embedplug {
namespace rules {

enum class ContrastiveLoss : int32_t { kSupCon = 0, kMultiSimilarity = 1, kCircle = 2 };

// The groups a row's kept logits enter (SupCon uses one, in the negative slot).
enum ColumnGroup : int32_t { kPositiveGroup = 0, kNegativeGroup = 1 };

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

// What a row's structure gives before any similarity is read: its pair counts, from the class
// sizes, and whether any row holds NaN or +-inf (a non-finite row makes every similarity row
// non-finite, since each row meets every other).
struct RowCounts {
  int64_t positives = 0, negatives = 0;
  bool non_finite = false;
};

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

// A row's groups once every pair has been folded in: per group the maximum kept logit and
// sum exp(logit - maximum), the count of kept columns, and (SupCon) the sum of the positives' logits.
template <typename scalar_t>
struct GroupSums {
  scalar_t maximum[2] = {-rule_infinity<scalar_t>(), -rule_infinity<scalar_t>()};
  scalar_t exp_sum[2] = {scalar_t(0), scalar_t(0)};
  int64_t kept[2] = {0, 0};
  scalar_t positive_logit_sum = scalar_t(0);
};

// GroupSums from the online log-sum-exp states the passes merged. MultiSimilarity's logsumexp
// appends a zero logit to each group (PML's add_one), folded in here as one more logit.
template <typename scalar_t>
C10_HOST_DEVICE inline GroupSums<scalar_t> group_sums_of(const ContrastiveParams<scalar_t>& p,
                                                         infonce::RunningLogSumExp<scalar_t> positive,
                                                         infonce::RunningLogSumExp<scalar_t> negative,
                                                         int64_t kept_positive, int64_t kept_negative,
                                                         scalar_t positive_logit_sum) {
  if (p.loss == ContrastiveLoss::kMultiSimilarity) {
    positive.add_logit(scalar_t(0));
    negative.add_logit(scalar_t(0));
  }
  GroupSums<scalar_t> sums;
  sums.maximum[kPositiveGroup] = positive.maximum;
  sums.exp_sum[kPositiveGroup] = positive.sum;
  sums.maximum[kNegativeGroup] = negative.maximum;
  sums.exp_sum[kNegativeGroup] = negative.sum;
  sums.kept[kPositiveGroup] = kept_positive;
  sums.kept[kNegativeGroup] = kept_negative;
  sums.positive_logit_sum = positive_logit_sum;
  return sums;
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
C10_HOST_DEVICE inline RowResult<scalar_t> finish_row(const ContrastiveParams<scalar_t>& p, const RowCounts& counts,
                                                      const GroupSums<scalar_t>& sums) {
  RowResult<scalar_t> out;
  const scalar_t nan = std::numeric_limits<scalar_t>::quiet_NaN();
  if (p.loss == ContrastiveLoss::kSupCon) {
    out.positive_pairs = counts.positives;
    out.negative_pairs = counts.negatives;
    if (counts.non_finite) {
      out.loss = nan;
      out.coefficient[kNegativeGroup] = nan;
      return out;
    }
    if (counts.positives == 0) return out;  // PML: -(0 / tiny), filtered out by AvgNonZeroReducer
    const scalar_t log_normalizer = sums.maximum[kNegativeGroup] + rule_log(sums.exp_sum[kNegativeGroup]);
    // PML divides by (count + finfo.tiny); the tiny term vanishes next to a count >= 1.
    const scalar_t count = static_cast<scalar_t>(counts.positives) + std::numeric_limits<scalar_t>::min();
    out.loss = -(sums.positive_logit_sum - static_cast<scalar_t>(counts.positives) * log_normalizer) / count;
    out.coefficient[kNegativeGroup] = scalar_t(1) / sums.exp_sum[kNegativeGroup];
    out.positive_offset = -(scalar_t(1) / p.temperature) / count;
    return out;
  }
  out.positive_pairs = sums.kept[kPositiveGroup];
  out.negative_pairs = sums.kept[kNegativeGroup];
  if (counts.non_finite) {
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
  if (counts.positives == 0 || counts.negatives == 0) return out;
  const scalar_t z = (sums.maximum[kPositiveGroup] + rule_log(sums.exp_sum[kPositiveGroup])) +
                     (sums.maximum[kNegativeGroup] + rule_log(sums.exp_sum[kNegativeGroup]));
  out.loss = softplus(z);
  const scalar_t slope = softplus_slope(z);
  out.coefficient[kPositiveGroup] = slope / sums.exp_sum[kPositiveGroup];
  out.coefficient[kNegativeGroup] = slope / sums.exp_sum[kNegativeGroup];
  return out;
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

// A row once the passes have folded every pair in: its GroupSums and finish_row's result. The pair
// counts come from the class sizes (class_size samples share the anchor's label, itself included),
// the per-group states from the lse pass.
template <typename scalar_t>
struct FinishedRow {
  GroupSums<scalar_t> sums;
  RowResult<scalar_t> result;
};

template <typename scalar_t>
C10_HOST_DEVICE inline FinishedRow<scalar_t> finish_anchor(const ContrastiveParams<scalar_t>& p, int64_t class_size,
                                                           int64_t n, bool non_finite,
                                                           infonce::RunningLogSumExp<scalar_t> positive,
                                                           infonce::RunningLogSumExp<scalar_t> negative,
                                                           int64_t kept_positive, int64_t kept_negative,
                                                           scalar_t positive_logit_sum) {
  RowCounts counts;
  counts.positives = class_size - 1;
  counts.negatives = n - class_size;
  counts.non_finite = non_finite;
  FinishedRow<scalar_t> out;
  out.sums = group_sums_of(p, positive, negative, kept_positive, kept_negative, positive_logit_sum);
  out.result = finish_row(p, counts, out.sums);
  return out;
}

// What the gradient pass reads about a finished row: its groups' maxima (the shifts of the pair
// exps) and finish_row's coefficients and SupCon offset times the row's weight w_a, exactly 0 for
// a row of weight 0 even when its coefficients are NaN (a row the reducer leaves out must not
// poison the batch).
template <typename scalar_t>
struct RowGradient {
  scalar_t maximum[2];
  scalar_t coefficient[2];
  scalar_t positive_offset;
};

template <typename scalar_t>
C10_HOST_DEVICE inline RowGradient<scalar_t> row_gradient(const GroupSums<scalar_t>& sums, const RowResult<scalar_t>& row,
                                                          scalar_t row_weight) {
  const bool dropped = row_weight == scalar_t(0);
  RowGradient<scalar_t> out;
  for (int g = 0; g < 2; ++g) {
    out.maximum[g] = sums.maximum[g];
    out.coefficient[g] = dropped ? scalar_t(0) : row_weight * row.coefficient[g];
  }
  out.positive_offset = dropped ? scalar_t(0) : row_weight * row.positive_offset;
  return out;
}

// What a pair contributes, as branch-free functions of its similarity and label test. `Loss` and
// `Mine` are template arguments so that the rules' switches fold away: the CPU tile loops then
// vectorise, and the CUDA kernels carry no per-pair branch on the loss.
template <ContrastiveLoss Loss, bool Mine, typename scalar_t>
struct PairRule {
  ContrastiveParams<scalar_t> p;

  // The parameters with the loss and the miner switch as constants the compiler sees: a member
  // read inside the loop would keep the rules' switches as branches, and branches stop the loop
  // from vectorising. Built field by field: the vectoriser gives up on a loop holding an
  // aggregate copy.
  C10_HOST_DEVICE ContrastiveParams<scalar_t> constant() const {
    ContrastiveParams<scalar_t> q;
    q.loss = Loss;
    q.mine = Mine;
    q.temperature = p.temperature;
    q.alpha = p.alpha;
    q.beta = p.beta;
    q.base = p.base;
    q.m = p.m;
    q.gamma = p.gamma;
    q.epsilon = p.epsilon;
    return q;
  }

  // Whether the pair's logit goes to the positive group (SupCon has one group, the negative slot).
  C10_HOST_DEVICE static bool in_positive_group(bool same) { return Loss != ContrastiveLoss::kSupCon && same; }

  C10_HOST_DEVICE scalar_t logit(scalar_t s, bool same) const {
    const ContrastiveParams<scalar_t> q = constant();
    if (Loss == ContrastiveLoss::kSupCon) return unshifted_logit(q, s, kNegativeGroup);
    const scalar_t positive = unshifted_logit(q, s, kPositiveGroup);
    const scalar_t negative = unshifted_logit(q, s, kNegativeGroup);
    return same ? positive : negative;
  }

  C10_HOST_DEVICE scalar_t slope(scalar_t s, bool same) const {
    const ContrastiveParams<scalar_t> q = constant();
    const scalar_t positive = logit_slope(q, s, kPositiveGroup);
    const scalar_t negative = logit_slope(q, s, kNegativeGroup);
    return in_positive_group(same) ? positive : negative;
  }

  // Whether a row with these thresholds keeps the pair; the anchor's own column is the caller's.
  C10_HOST_DEVICE bool keeps(scalar_t s, bool same, scalar_t hardest_positive, scalar_t hardest_negative) const {
    if (!Mine) return true;
    const ContrastiveParams<scalar_t> q = constant();
    const bool positive = keeps_positive(q, hardest_negative, s);
    const bool negative = keeps_negative(q, hardest_positive, s);
    return (same & positive) | (!same & negative);  // a select between two bools is not if-converted
  }
};

// The exponent a pair enters its group's exp sum with: logit - shift for a kept pair, the exp
// cutoff for a dropped one (its exp is ~0 and adds nothing next to a group sum >= 1). The clamp
// keeps exp on its fast path (ATen's vectorised exp leaves it for inputs whose result underflows,
// ~50x slower); NaN stays NaN.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t shifted_logit(bool keep, scalar_t logit, scalar_t shift) {
  const scalar_t cutoff = infonce::exp_underflow_cutoff<scalar_t>();
  const scalar_t shifted = logit - shift;
  return keep ? (shifted < cutoff ? cutoff : shifted) : cutoff;
}

// W[a, j] = w_a d loss_a / d s_aj of one pair, from row a's weighted coefficient of the pair's
// group, exp(shifted_logit) and the logit's slope; plus SupCon's -w_a / (T |P_a|) on every
// positive pair (the derivative of its mean over the positives' logits).
template <ContrastiveLoss Loss, typename scalar_t>
C10_HOST_DEVICE inline scalar_t pair_gradient(bool keep, bool same, bool other, scalar_t coefficient,
                                              scalar_t exp_shifted, scalar_t slope, scalar_t positive_offset) {
  const scalar_t term = coefficient * exp_shifted * slope;
  const scalar_t offset =
      Loss == ContrastiveLoss::kSupCon ? ((same & other) ? positive_offset : scalar_t(0)) : scalar_t(0);
  return (keep ? term : scalar_t(0)) + offset;
}

}  // namespace rules
}  // namespace embedplug
