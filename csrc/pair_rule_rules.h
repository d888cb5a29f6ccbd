// The interpreter of a pair rule (embedplug/pair_rules): the per-pair and per-anchor rules that the
// CPU kernel (csrc/cpu/pair_rule_kernel.cpp) and the CUDA kernel (csrc/cuda/pair_rule_kernel.cu)
// share. Host/device functions, no CUDA includes, no std containers.
//
// A rule arrives as two flat lists (embedplug/pair_rules/encoding.py writes them, decode() below
// reads them): per side (positives, then negatives) kSideCodes integers and kSideParams reals, then
// the rule's kRuleCodes integers. The formulas and their evaluation order are the pure-torch
// interpreter's (embedplug/reference/pair_rule.py), which reproduces pytorch-metric-learning 2.9.
//
// Pipeline of one side for a kept pair (anchor a, partner j), g the Gram entry of the pair:
//   s  = measure(g)                        cosine/dot: g; euclidean: sqrt(max(r, 0)) with r the
//                                          entry of cdist's augmented product [-2u, |u|^2, 1] [u, 1, |u|^2]^T
//   s' = cos(acos(s) + angle_offset)       only with an angle offset
//   x  = (scale * w(s)) * (s' - shift) / T w: the detached self-paced weight, 1 without one
//   t  = x | [x]_+ | versus term           (VersusLse, positives only)
// and the side's reduction over the anchor's kept pairs. Every pair's gradient is expressed on the
// plain Gram entry u_a . u_j (gram_slope), so both backends apply it with the same GEMMs.
#pragma once

#include <c10/macros/Macros.h>

#include "infonce_rules.h"

#include <math.h>

#include <cstdint>
#include <limits>

namespace embedplug {
namespace pair_rule {

enum class Measure : int32_t { kCosine = 0, kDot = 1, kEuclidean = 2, kSquaredEuclidean = 3 };
enum class Term : int32_t { kLogit = 0, kHinge = 1, kVersus = 2 };
enum class Reduction : int32_t { kLse = 0, kLseAddOne = 1, kSum = 2, kMean = 3, kPairs = 4 };
enum class VersusReference : int32_t { kPairAndNegatives = 0, kPositivesAndNegatives = 1, kNegatives = 2 };
enum class VersusOuter : int32_t { kIdentity = 0, kTinyFloor = 1, kSquaredHingeHalf = 2 };
enum class CombineKind : int32_t { kNone = -1, kSum = 0, kSoftplusOfSum = 1, kHingeOfSum = 2, kPositives = 3 };
enum class Over : int32_t { kAnchors = 0, kPositivePairs = 1, kPairsOfEachSide = 2 };

// The layout of the encoded lists (embedplug/pair_rules/encoding.py holds the same numbers).
constexpr int kEncodingVersion = 1;
constexpr int kSideCodes = 7;   // measure, normalize, has_weight, weight_increasing, has_filter, term, reduction
constexpr int kSideParams = 7;  // angle_offset, weight_optimum, scale, shift, temperature, epsilon, output_scale
constexpr int kRuleCodes = 7;   // version, versus_reference, versus_partner, versus_outer, combine, both_sides, over
constexpr int kCodes = 2 * kSideCodes + kRuleCodes;
constexpr int kParams = 2 * kSideParams;

template <typename scalar_t>
struct SideRule {
  Measure measure;
  bool normalize, has_weight, weight_increasing, has_filter, has_angle, has_temperature, has_output_scale;
  Term term;
  Reduction reduction;
  scalar_t angle_offset, weight_optimum, scale, shift, temperature, epsilon, output_scale;
};

template <typename scalar_t>
struct Rule {
  SideRule<scalar_t> side[2];  // kPositives, kNegatives
  VersusReference versus_reference;
  bool versus_partner;  // rows "anchor_and_positive": the positive's negatives join the anchor's
  VersusOuter versus_outer;
  CombineKind combine;
  bool zero_unless_both_sides;
  Over over;
};

enum SideIndex : int32_t { kPositives = 0, kNegatives = 1 };

C10_HOST_DEVICE inline bool is_distance(Measure m) { return m == Measure::kEuclidean || m == Measure::kSquaredEuclidean; }

// Reads the encoded lists (lengths and codes checked by the host before this runs).
template <typename scalar_t>
C10_HOST_DEVICE inline Rule<scalar_t> decode(const int64_t* codes, const double* params) {
  Rule<scalar_t> rule;
  for (int s = 0; s < 2; ++s) {
    const int64_t* c = codes + s * kSideCodes;
    const double* p = params + s * kSideParams;
    SideRule<scalar_t>& side = rule.side[s];
    side.measure = static_cast<Measure>(c[0]);
    side.normalize = c[1] != 0;
    side.has_weight = c[2] != 0;
    side.weight_increasing = c[3] != 0;
    side.has_filter = c[4] != 0;
    side.term = static_cast<Term>(c[5]);
    side.reduction = static_cast<Reduction>(c[6]);
    side.angle_offset = static_cast<scalar_t>(p[0]);
    side.weight_optimum = static_cast<scalar_t>(p[1]);
    side.scale = static_cast<scalar_t>(p[2]);
    side.shift = static_cast<scalar_t>(p[3]);
    side.temperature = static_cast<scalar_t>(p[4]);
    side.epsilon = static_cast<scalar_t>(p[5]);
    side.output_scale = static_cast<scalar_t>(p[6]);
    // Identity steps are skipped, as the reference skips them (x / 1 and 1 * v are exact anyway,
    // but cos(acos(s)) is not).
    side.has_angle = p[0] != 0.0;
    side.has_temperature = p[4] != 1.0;
    side.has_output_scale = p[6] != 1.0;
  }
  const int64_t* r = codes + 2 * kSideCodes;
  rule.versus_reference = static_cast<VersusReference>(r[1]);
  rule.versus_partner = r[2] != 0;
  rule.versus_outer = static_cast<VersusOuter>(r[3]);
  rule.combine = static_cast<CombineKind>(r[4]);
  rule.zero_unless_both_sides = r[5] != 0;
  rule.over = static_cast<Over>(r[6]);
  return rule;
}

C10_HOST_DEVICE inline float rule_exp(float x) { return ::expf(x); }
C10_HOST_DEVICE inline double rule_exp(double x) { return ::exp(x); }
C10_HOST_DEVICE inline float rule_log(float x) { return ::logf(x); }
C10_HOST_DEVICE inline double rule_log(double x) { return ::log(x); }
C10_HOST_DEVICE inline float rule_log1p(float x) { return ::log1pf(x); }
C10_HOST_DEVICE inline double rule_log1p(double x) { return ::log1p(x); }
C10_HOST_DEVICE inline float rule_sqrt(float x) { return ::sqrtf(x); }
C10_HOST_DEVICE inline double rule_sqrt(double x) { return ::sqrt(x); }
C10_HOST_DEVICE inline float rule_acos(float x) { return ::acosf(x); }
C10_HOST_DEVICE inline double rule_acos(double x) { return ::acos(x); }
C10_HOST_DEVICE inline float rule_cos(float x) { return ::cosf(x); }
C10_HOST_DEVICE inline double rule_cos(double x) { return ::cos(x); }
C10_HOST_DEVICE inline float rule_sin(float x) { return ::sinf(x); }
C10_HOST_DEVICE inline double rule_sin(double x) { return ::sin(x); }

template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t relu(scalar_t x) {
  return x > scalar_t(0) ? x : scalar_t(0);
}

// ---- the measure ---------------------------------------------------------------------------------

// s from the Gram entry of the pair: the plain product for similarities, torch.cdist's augmented
// product for distances (its matmul path: sqrt(clamp_min(r, 0)); PML squares that distance for
// power 2).
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t measure_of(Measure m, scalar_t gram) {
  if (!is_distance(m)) return gram;
  const scalar_t d = rule_sqrt(gram > scalar_t(0) ? gram : scalar_t(0));
  return m == Measure::kSquaredEuclidean ? d * d : d;
}

// d s / d (u_a . u_j), the plain Gram entry: 1 for similarities; for distances r = -2 u_a.u_j +
// |u_a|^2 + |u_j|^2, so -1/d (euclidean) and -2 (squared), with the |u|^2 terms' share given by the
// row sums of the pair weights. 0 at distance 0, where cdist's backward masks its ratio.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t gram_slope(Measure m, scalar_t s) {
  if (m == Measure::kCosine || m == Measure::kDot) return scalar_t(1);
  if (!(s > scalar_t(0))) return scalar_t(0);
  return m == Measure::kSquaredEuclidean ? scalar_t(-2) : scalar_t(-1) / s;
}

// Whether two distinct rows are so close that their distance is mostly rounding: r is a difference
// of |u|^2 terms, so its error is a few eps (|u_a|^2 + |u_j|^2), and the gradient divides by sqrt(r).
// Within 1024 eps another summation order than torch.cdist's moves the distance and its gradient
// beyond float32's 1e-5.
template <typename scalar_t>
C10_HOST_DEVICE inline bool near_duplicate(scalar_t gram, scalar_t squared_a, scalar_t squared_j) {
  return gram < scalar_t(1024) * std::numeric_limits<scalar_t>::epsilon() * (squared_a + squared_j);
}

// "Closeness" for the mining filter: larger is closer (the similarity, or minus the distance).
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t closeness(Measure m, scalar_t s) {
  return is_distance(m) ? -s : s;
}

// ---- one side's logit ------------------------------------------------------------------------------
// Written as steps, each a branch-free function of its inputs, so that the CPU kernel can run them
// as vectorised loops over a tile row with the rule's switches decided once per row; logit and
// logit_slope compose the same steps in the same order.

// PML's CircleLoss weight, detached: [s - optimum]_+ (increasing) or [optimum - s]_+.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t self_paced(scalar_t s, scalar_t optimum, bool increasing) {
  return increasing ? relu(s - optimum) : relu(optimum - s);
}

template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t angled(scalar_t s, scalar_t offset) {
  return rule_cos(rule_acos(s) + offset);
}

// d angled / d s as autograd differentiates acos and cos.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t angled_slope(scalar_t s, scalar_t offset) {
  return rule_sin(rule_acos(s) + offset) / rule_sqrt(scalar_t(1) - s * s);
}

// factor * (s' - shift): PML's CircleLoss order, (scale * w) * (s - shift).
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t affine_logit(scalar_t factor, scalar_t angled_s, scalar_t shift) {
  return factor * (angled_s - shift);
}

template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t weight_factor(const SideRule<scalar_t>& side, scalar_t s) {
  return side.has_weight ? side.scale * self_paced(s, side.weight_optimum, side.weight_increasing) : side.scale;
}

template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t logit(const SideRule<scalar_t>& side, scalar_t s) {
  const scalar_t a = side.has_angle ? angled(s, side.angle_offset) : s;
  scalar_t x = affine_logit(weight_factor(side, s), a, side.shift);
  if (side.has_temperature) x = x / side.temperature;
  return x;
}

// d x / d s, the weight held constant (detached).
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t logit_slope(const SideRule<scalar_t>& side, scalar_t s) {
  scalar_t slope = weight_factor(side, s);
  if (side.has_temperature) slope = slope / side.temperature;
  if (side.has_angle) slope = slope * angled_slope(s, side.angle_offset);
  return slope;
}

// d x / d (u_a . u_j): what a pair's d loss / d x is multiplied by to weigh its Gram entry.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t pair_slope(const SideRule<scalar_t>& side, scalar_t s) {
  return logit_slope(side, s) * gram_slope(side.measure, s);
}

// The term of a logit or hinge side, and d t / d x (relu's derivative is 0 at 0, as torch's).
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t term_of(Term term, scalar_t x) {
  return term == Term::kHinge ? relu(x) : x;
}
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t term_slope(Term term, scalar_t x) {
  return term == Term::kHinge ? (x > scalar_t(0) ? scalar_t(1) : scalar_t(0)) : scalar_t(1);
}

// ---- mining filter ---------------------------------------------------------------------------------

// MultiSimilarityMiner on closeness c: a positive is kept when c - eps < the hardest negative's
// closeness, a negative when c + eps > the hardest positive's. Comparisons in the dtype, strict; an
// anchor with no pair on the other side has the sentinel -inf / +inf and keeps nothing.
template <typename scalar_t>
C10_HOST_DEVICE inline bool kept_positive(scalar_t close, scalar_t epsilon, scalar_t hardest_negative) {
  return (close - epsilon) < hardest_negative;
}
template <typename scalar_t>
C10_HOST_DEVICE inline bool kept_negative(scalar_t close, scalar_t epsilon, scalar_t hardest_positive) {
  return (close + epsilon) > hardest_positive;
}
template <typename scalar_t>
C10_HOST_DEVICE inline bool keeps(const SideRule<scalar_t>& side, int32_t which, scalar_t close, scalar_t hardest_other) {
  if (!side.has_filter) return true;
  return which == kPositives ? kept_positive(close, side.epsilon, hardest_other)
                             : kept_negative(close, side.epsilon, hardest_other);
}

// NaN-propagating running extremes (amax / amin order).
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t nan_max(scalar_t a, scalar_t b) {
  return (a != a || b > a) ? (b != b ? b : (a != a ? a : b)) : a;
}
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t nan_min(scalar_t a, scalar_t b) {
  return (a != a || b < a) ? (b != b ? b : (a != a ? a : b)) : a;
}

// ---- per-anchor side state -------------------------------------------------------------------------

// What a side's passes fold per anchor: kept pairs, the online log-sum-exp of their logits (for the
// lse reductions and the versus reference), the sum of their terms and how many terms are > 0 in
// exact arithmetic (hinge arguments, versus flags).
template <typename scalar_t>
struct SideState {
  int64_t kept = 0;
  scalar_t maximum = -std::numeric_limits<scalar_t>::infinity();
  scalar_t exp_sum = scalar_t(0);
  scalar_t term_sum = scalar_t(0);
  int64_t positive_terms = 0;

  C10_HOST_DEVICE infonce::RunningLogSumExp<scalar_t> lse() const {
    return infonce::RunningLogSumExp<scalar_t>::of(maximum, exp_sum);
  }
  C10_HOST_DEVICE void merge(const SideState& other) {
    infonce::RunningLogSumExp<scalar_t> state = lse();
    state.merge(other.lse());
    maximum = state.maximum;
    exp_sum = state.sum;
    kept += other.kept;
    term_sum += other.term_sum;
    positive_terms += other.positive_terms;
  }
  // PML's masked log-sum-exp: 0 over no kept pair.
  C10_HOST_DEVICE scalar_t log_sum_exp() const { return kept == 0 ? scalar_t(0) : maximum + rule_log(exp_sum); }
};

// A side's value per anchor (or its pair-term sum) and whether it is > 0 in exact arithmetic
// (known = false where the rule does not make that known: an lse of logits, a scale < 0).
template <typename scalar_t>
struct SideValue {
  scalar_t value;
  bool known, positive;
};

// Whether a side's per-pair terms have known signs (hinge, or versus flags other than against the
// negatives alone with the identity/floor outer).
template <typename scalar_t>
C10_HOST_DEVICE inline bool pair_flags_known(const Rule<scalar_t>& rule, int32_t which) {
  const SideRule<scalar_t>& side = rule.side[which];
  if (side.term == Term::kHinge) return true;
  if (side.term == Term::kLogit) return false;
  if (rule.versus_outer == VersusOuter::kSquaredHingeHalf) return true;
  return rule.versus_reference != VersusReference::kNegatives;
}

template <typename scalar_t>
C10_HOST_DEVICE inline SideValue<scalar_t> side_value(const Rule<scalar_t>& rule, int32_t which,
                                                      const SideState<scalar_t>& state) {
  const SideRule<scalar_t>& side = rule.side[which];
  SideValue<scalar_t> out{scalar_t(0), false, false};
  switch (side.reduction) {
    case Reduction::kLse:
      out.value = state.log_sum_exp();
      break;
    case Reduction::kLseAddOne: {
      infonce::RunningLogSumExp<scalar_t> lse = state.lse();
      lse.add_logit(scalar_t(0));
      out.value = lse.maximum + rule_log(lse.sum);
      out.known = true;  // log(1 + sum e^x) > 0 exactly when a pair is kept, however small e^x
      out.positive = state.kept >= 1;
      break;
    }
    case Reduction::kSum:
    case Reduction::kMean:
    case Reduction::kPairs:
    default:
      out.value = state.term_sum;
      if (side.reduction == Reduction::kMean) {
        out.value = out.value / static_cast<scalar_t>(state.kept > 0 ? state.kept : 1);
      }
      out.known = pair_flags_known(rule, which);
      out.positive = state.positive_terms >= 1;
      break;
  }
  if (side.has_output_scale) {
    out.value = side.output_scale * out.value;
    if (side.output_scale < scalar_t(0)) out.known = false;
  }
  return out;
}

// torch.nn.functional.softplus(beta=1, threshold=20) and its derivative, as ATen evaluates them.
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

// An anchor once both sides are folded: its stream values (loss per anchor, or each side's pair
// term sum), the reducer's counts, and d loss / d (side value) for the gradient.
template <typename scalar_t>
struct AnchorResult {
  scalar_t loss[2] = {scalar_t(0), scalar_t(0)};
  int64_t counted[2] = {-1, -1};
  int64_t terms[2] = {0, 0};
  scalar_t side_slope[2] = {scalar_t(0), scalar_t(0)};  // d loss_stream / d side value, per side
};

template <typename scalar_t>
C10_HOST_DEVICE inline int32_t streams(const Rule<scalar_t>& rule) {
  return rule.over == Over::kPairsOfEachSide ? 2 : 1;
}

// The anchor's streams from its side states (the reference's combine_sides and reduce step).
template <typename scalar_t>
C10_HOST_DEVICE inline AnchorResult<scalar_t> finish_anchor(const Rule<scalar_t>& rule, const SideState<scalar_t>& positives,
                                                            const SideState<scalar_t>& negatives) {
  AnchorResult<scalar_t> out;
  const SideValue<scalar_t> p = side_value(rule, kPositives, positives);
  const SideValue<scalar_t> n = side_value(rule, kNegatives, negatives);
  if (rule.over != Over::kAnchors) {
    // Pair streams: the side's pair-term sum, its pair count, and how many terms are > 0.
    const bool both = rule.over == Over::kPairsOfEachSide;
    out.loss[0] = p.value;
    out.terms[0] = positives.kept;
    out.counted[0] = p.known ? positives.positive_terms : -1;
    out.side_slope[0] = scalar_t(1);
    if (both) {
      out.loss[1] = n.value;
      out.terms[1] = negatives.kept;
      out.counted[1] = n.known ? negatives.positive_terms : -1;
      out.side_slope[1] = scalar_t(1);
    }
    return out;
  }
  out.terms[0] = 1;
  scalar_t loss = scalar_t(0);
  bool known = false, positive = false;
  switch (rule.combine) {
    case CombineKind::kPositives:
      loss = p.value;
      known = p.known;
      positive = p.positive;
      out.side_slope[kPositives] = scalar_t(1);
      break;
    case CombineKind::kSum:
      loss = p.value + n.value;
      known = p.known && n.known;
      positive = p.positive || n.positive;
      out.side_slope[kPositives] = out.side_slope[kNegatives] = scalar_t(1);
      break;
    case CombineKind::kSoftplusOfSum: {
      const scalar_t argument = p.value + n.value;
      loss = softplus(argument);
      known = positive = true;
      out.side_slope[kPositives] = out.side_slope[kNegatives] = softplus_slope(argument);
      break;
    }
    case CombineKind::kHingeOfSum:
    default: {
      const scalar_t argument = p.value + n.value;
      loss = relu(argument);
      known = true;
      positive = argument > scalar_t(0);
      out.side_slope[kPositives] = out.side_slope[kNegatives] = positive ? scalar_t(1) : scalar_t(0);
      break;
    }
  }
  if (rule.zero_unless_both_sides) {
    const bool both = positives.kept > 0 && negatives.kept > 0;
    loss = loss * (both ? scalar_t(1) : scalar_t(0));  // the reference multiplies by its row mask
    positive = positive && both;
    if (!both) out.side_slope[kPositives] = out.side_slope[kNegatives] = scalar_t(0);
  }
  out.loss[0] = loss;
  out.counted[0] = known ? (positive ? 1 : 0) : -1;
  return out;
}

// ---- the positives' versus term --------------------------------------------------------------------

// The reference log-sum-exp of a positive pair: the anchor's own (over its kept negatives, or over
// its kept positives and negatives) and, with a partner, the positive's negatives joined in.
template <typename scalar_t>
struct VersusReferenceOf {
  scalar_t own_shift, own_log_sum;  // L_own = shift + log_sum
  bool own_nonempty;
  scalar_t partner_shift, partner_log_sum;
  bool partner_nonempty;
};

// z of one positive pair with logit x, its outer term t, whether t > 0 in exact arithmetic (where
// known), dt/dz * dz/dD ("q per unit of the pair term's coefficient") with D = L - x, and the shares
// of D's log-sum-exp that are the anchor's and the partner's (e^{L_own - L}, e^{L_partner - L}).
template <typename scalar_t>
struct VersusTerm {
  scalar_t term, slope, own_share, partner_share;
  bool positive;
};

// The anchor's own reference from its final side states: the log-sum-exp of its kept negatives, or
// of its kept positives and negatives together.
template <typename scalar_t>
C10_HOST_DEVICE inline void own_reference(const Rule<scalar_t>& rule, const SideState<scalar_t>& positives,
                                          const SideState<scalar_t>& negatives, VersusReferenceOf<scalar_t>& ref) {
  if (rule.versus_reference == VersusReference::kPositivesAndNegatives) {
    infonce::RunningLogSumExp<scalar_t> both = positives.lse();
    both.merge(negatives.lse());
    ref.own_shift = both.maximum;
    ref.own_log_sum = rule_log(both.sum);
    ref.own_nonempty = positives.kept + negatives.kept > 0;
    return;
  }
  ref.own_nonempty = negatives.kept > 0;
  ref.own_shift = ref.own_nonempty ? negatives.maximum : scalar_t(0);
  ref.own_log_sum = ref.own_nonempty ? rule_log(negatives.exp_sum) : scalar_t(0);
}

// The partner's part of a positive pair's reference: the positive's own kept negatives.
template <typename scalar_t>
C10_HOST_DEVICE inline void partner_reference(const SideState<scalar_t>& negatives, VersusReferenceOf<scalar_t>& ref) {
  ref.partner_nonempty = negatives.kept > 0;
  ref.partner_shift = ref.partner_nonempty ? negatives.maximum : scalar_t(0);
  ref.partner_log_sum = ref.partner_nonempty ? rule_log(negatives.exp_sum) : scalar_t(0);
}

template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t log_add_exp(scalar_t a, scalar_t b) {
  // torch.logaddexp: max + log1p(exp(-|a - b|)), with equal infinities returned as they are.
  if (a == b && (a == std::numeric_limits<scalar_t>::infinity() || a == -std::numeric_limits<scalar_t>::infinity())) {
    return a;
  }
  const scalar_t m = a > b ? a : b;
  const scalar_t d = a > b ? b - a : a - b;
  return m + rule_log1p(rule_exp(d));
}

template <typename scalar_t>
C10_HOST_DEVICE inline VersusTerm<scalar_t> versus_term(const Rule<scalar_t>& rule, const VersusReferenceOf<scalar_t>& ref,
                                                        scalar_t x, int64_t members) {
  VersusTerm<scalar_t> out{scalar_t(0), scalar_t(0), scalar_t(0), scalar_t(0), false};
  scalar_t z, dz = scalar_t(1);
  bool nonempty;
  // D = L - x, as (shift - x) + log_sum so that the difference never subtracts two large numbers.
  const scalar_t own = (ref.own_shift - x) + ref.own_log_sum;
  scalar_t difference = own;
  if (rule.versus_partner) {
    const scalar_t partner = (ref.partner_shift - x) + ref.partner_log_sum;
    if (ref.own_nonempty && ref.partner_nonempty) {
      difference = log_add_exp(own, partner);
      out.own_share = rule_exp(own - difference);
      out.partner_share = rule_exp(partner - difference);
    } else if (ref.partner_nonempty) {
      difference = partner;
      out.partner_share = scalar_t(1);
    } else {
      out.own_share = ref.own_nonempty ? scalar_t(1) : scalar_t(0);
    }
    nonempty = ref.own_nonempty || ref.partner_nonempty;
  } else {
    nonempty = ref.own_nonempty;
    out.own_share = nonempty ? scalar_t(1) : scalar_t(0);
  }
  if (rule.versus_reference == VersusReference::kPairAndNegatives) {
    // log(1 + sum_n e^{x_n - x}) = softplus(D), 0 without negatives.
    z = nonempty ? log_add_exp(scalar_t(0), difference) : scalar_t(0);
    dz = nonempty ? rule_exp(difference - z) : scalar_t(0);  // sigmoid(D)
    out.positive = nonempty;
  } else if (rule.versus_reference == VersusReference::kPositivesAndNegatives) {
    z = difference;  // the pair itself is a member, so the reference is never empty
    out.positive = members >= 2;
  } else {
    // Against the negatives alone; PML's masked log-sum-exp is 0 over none: z = -x (dz/dx = -1,
    // the same as dD/dx with D = L - x).
    z = nonempty ? difference : -x;
    out.positive = false;
  }
  scalar_t dt = scalar_t(1);
  switch (rule.versus_outer) {
    case VersusOuter::kTinyFloor: {
      const scalar_t tiny = std::numeric_limits<scalar_t>::min();
      const scalar_t e = rule_exp(-z);
      out.term = -rule_log(e + tiny);
      dt = e / (e + tiny);
      break;
    }
    case VersusOuter::kSquaredHingeHalf: {
      const scalar_t r = relu(z);
      out.term = r * r / scalar_t(2);
      dt = r;
      out.positive = z > scalar_t(0);
      break;
    }
    case VersusOuter::kIdentity:
    default:
      out.term = z;
      break;
  }
  out.slope = dt * dz;
  return out;
}

// ---- gradient coefficients -------------------------------------------------------------------------

// weight * slope, exactly 0 when either is 0 (an anchor of weight 0, a flat step), even against a
// non-finite factor.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t weighted(scalar_t weight, scalar_t slope) {
  return weight == scalar_t(0) || slope == scalar_t(0) ? scalar_t(0) : weight * slope;
}

// d loss / d x of a kept pair whose anchor's coefficients are these:
//   exp_coefficient * e^{x - shift} + term_coefficient * d t / d x
// (shift: the anchor's maximum kept logit of the side). The lse reductions' softmax weights and the
// versus reference's (A_a e^{x - L_a}) share the exp; sum/mean/pairs reductions are term
// coefficients. Exactly 0 for an anchor of weight 0, even when its coefficients are not finite.
template <typename scalar_t>
struct PairCoefficients {
  scalar_t shift = scalar_t(0);
  scalar_t exp_coefficient = scalar_t(0);
  scalar_t term_coefficient = scalar_t(0);
};

// d (side value) / d t for one pair, without the lse softmax weight, and the lse coefficient.
template <typename scalar_t>
C10_HOST_DEVICE inline PairCoefficients<scalar_t> side_coefficients(const SideRule<scalar_t>& side,
                                                                    const SideState<scalar_t>& state,
                                                                    scalar_t value_coefficient) {
  PairCoefficients<scalar_t> out;
  out.shift = state.kept > 0 ? state.maximum : scalar_t(0);
  if (value_coefficient == scalar_t(0) || state.kept == 0) return out;
  const scalar_t c = side.has_output_scale ? value_coefficient * side.output_scale : value_coefficient;
  switch (side.reduction) {
    case Reduction::kLse:
      out.exp_coefficient = c / state.exp_sum;
      break;
    case Reduction::kLseAddOne: {
      infonce::RunningLogSumExp<scalar_t> lse = state.lse();
      lse.add_logit(scalar_t(0));
      // e^{x - M} / S with M = max(maximum, 0), as e^{x - maximum} * e^{maximum - M} / S.
      out.exp_coefficient = c * rule_exp(state.maximum - lse.maximum) / lse.sum;
      break;
    }
    case Reduction::kMean:
      out.term_coefficient = c / static_cast<scalar_t>(state.kept);
      break;
    case Reduction::kSum:
    case Reduction::kPairs:
    default:
      out.term_coefficient = c;
      break;
  }
  return out;
}

template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t pair_logit_gradient(const PairCoefficients<scalar_t>& k, Term term, scalar_t x,
                                                    scalar_t exp_shifted) {
  // A zero coefficient contributes exactly 0, even against a non-finite pair (an anchor of weight 0
  // must not poison the batch).
  const scalar_t from_exp = k.exp_coefficient == scalar_t(0) ? scalar_t(0) : k.exp_coefficient * exp_shifted;
  const scalar_t from_term = k.term_coefficient == scalar_t(0) ? scalar_t(0) : k.term_coefficient * term_slope(term, x);
  return from_exp + from_term;
}

// The weight on the plain Gram entry of a kept pair: d loss / d x * d x / d s * d s / d g.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t gram_weight(const SideRule<scalar_t>& side, scalar_t s, scalar_t logit_gradient) {
  if (logit_gradient == scalar_t(0)) return scalar_t(0);
  return logit_gradient * pair_slope(side, s);
}

// The exponent a kept pair enters its anchor's exp sum with, clamped at the underflow cutoff (ATen's
// vectorised exp leaves its fast path below it); a dropped pair sits at the cutoff too, and the
// caller masks it.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t shifted(scalar_t x, scalar_t shift) {
  const scalar_t cutoff = infonce::exp_underflow_cutoff<scalar_t>();
  const scalar_t v = x - shift;
  return v < cutoff ? cutoff : v;
}

}  // namespace pair_rule
}  // namespace embedplug
