// The fused interpreter of a pair rule on CUDA: the CPU kernel's results (csrc/cpu/pair_rule_kernel.cpp,
// the specification) with its rules (csrc/pair_rule_rules.h), on full-row bands instead of class
// blocks and upper-triangular tiles.
//
// A band is R consecutive rows against every column: one cuBLAS GEMM (at::mm_out on the current
// stream) of the rule's operands (rule_operands: the rows, or torch.cdist's augmented rows) into a
// reused, bounded buffer, then one thread block per band row. A full row holds all of its anchor's
// positives and negatives, so every per-anchor state is folded by one block with CUB reductions, in
// an order fixed by the block size, and nothing is ever written by two blocks: no atomics, the same
// bits run to run. The price is the whole GEMM per pass instead of the CPU's half; the symmetric
// bookkeeping the CPU needs (column states, a column side per tile) is gone, which is what keeps a
// kernel without a GPU to test it on readable.
// Passes, each over every band in order on one stream, each reading only what is final:
//   forward  per row: hardest positive / negative closeness (the mining filters' thresholds), the
//            negatives' side state, then the positives' (the filter needs the hardest negative), near
//            duplicates of distance rules; without a versus partner the versus terms too;
//   versus   with a partner only: the versus terms (a positive's negatives state must be final);
//   finish   one thread per anchor: pair_rule::finish_anchor;
// and for the gradient (per stream, weights w_a): one thread per anchor for the side coefficients;
// with versus terms a band pass for the coefficient A_a of each anchor's reference softmax, written
// by row a's own block (its own terms, and with a partner the terms of its positives p that name a
// as partner, recomputed from p's states) instead of the CPU's scatter into A[p]; then a band pass
// writes W[a, j] (anchor a's own weight of pair (a, j)) and G += W U, G += W^T U_band meet the rows
// in GEMMs. Multiply-adds: N^2 D per pass (forward 1 or 2, gradient 1 or 2, plus 2 N^2 D of weights).
// Memory: two band buffers (row_block_size), O(N) states, one N x D gradient.
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>

#include "cuda/cuda_common.cuh"
#include "op_input_checks.h"
#include "pair_rule_host.h"
#include "pair_rule_rules.h"
#include "pairwise_common.h"

namespace embedplug {
namespace cuda {
namespace {

using namespace pair_rule;

// ---- block reductions ------------------------------------------------------------------------------

struct SumOp {
  template <typename T>
  __device__ T operator()(const T& a, const T& b) const {
    return a + b;
  }
};
// The maximum of kept logits as the CPU folds it (`if (x > maximum) maximum = x`): a NaN never wins,
// so partials are NaN-free.
struct KeptMaxOp {
  template <typename T>
  __device__ T operator()(const T& a, const T& b) const {
    return b > a ? b : a;
  }
};
struct NanMinOp {
  template <typename T>
  __device__ T operator()(const T& a, const T& b) const {
    return nan_min(a, b);
  }
};
struct NanMaxOp {
  template <typename T>
  __device__ T operator()(const T& a, const T& b) const {
    return nan_max(a, b);
  }
};

// The block's reduction of every thread's partial, returned to every thread. One storage per
// (type, operation); the trailing barrier lets the next call reuse it.
template <typename T, typename Op>
__device__ T block_all_reduce(const T& partial, Op op) {
  using Reduce = cub::BlockReduce<T, kThreadsPerBlock>;
  __shared__ typename Reduce::TempStorage storage;
  __shared__ T result;
  const T total = Reduce(storage).Reduce(partial, op);
  if (threadIdx.x == 0) result = total;
  __syncthreads();
  const T out = result;
  __syncthreads();
  return out;
}

// ---- device state ----------------------------------------------------------------------------------

// Per-anchor arrays in device memory, [N] each.
template <typename scalar_t>
struct AnchorView {
  scalar_t* hardest_positive;  // closeness, before any filter (NaN propagates); +inf without positives
  scalar_t* hardest_negative;  // -inf without negatives
  SideState<scalar_t>* side[2];
  int64_t* near_duplicates;  // per row, distance rules only
  PairCoefficients<scalar_t>* coefficients[2];
  scalar_t* own_total;     // versus: sum over a's kept positives of q * own share
  scalar_t* versus_total;  // own_total plus, with a partner, what a's positives' terms give a's negatives
  uint8_t* active;         // any nonzero coefficient of the anchor
};

// One band: rows [row_begin, row_begin + rows) against all n columns, row-major.
template <typename scalar_t>
struct BandView {
  const scalar_t* gram;
  int64_t row_begin, n;
  const int64_t* labels;
  const scalar_t* squared;  // |u_j|^2 (column D of the left operand), distance rules only
};

// A pair (a, j) as one side reads it: s, closeness, and the logit.
template <typename scalar_t>
struct SidePair {
  scalar_t s, close;
};

template <typename scalar_t>
__device__ inline SidePair<scalar_t> side_pair(const SideRule<scalar_t>& side, scalar_t gram) {
  const scalar_t s = measure_of(side.measure, gram);
  return {s, closeness(side.measure, s)};
}

template <typename scalar_t>
__device__ inline bool is_active(const PairCoefficients<scalar_t>& k) {
  return k.exp_coefficient != scalar_t(0) || k.term_coefficient != scalar_t(0);
}

// Folds one side of row a: `kept_logit(j, x)` says whether column j is a kept pair of the side and
// gives its logit; `exp_of(x, maximum)` is the side's exp (negatives: clamped at the underflow
// cutoff as the CPU's exp_in_place of shifted(); positives: the plain exp of row_lse_state);
// `add_term(x, term_sum, positive_terms)` the non-versus term sums. Two sweeps: the kept count and
// maximum, then the exp and term sums at that maximum. An empty side keeps SideState's defaults.
template <typename scalar_t, typename KeptLogit, typename ExpOf, typename AddTerm>
__device__ SideState<scalar_t> fold_side(int64_t n, KeptLogit kept_logit, ExpOf exp_of, AddTerm add_term) {
  int64_t kept = 0;
  scalar_t maximum = -std::numeric_limits<scalar_t>::infinity();
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    scalar_t x;
    if (!kept_logit(j, x)) continue;
    ++kept;
    if (x > maximum) maximum = x;
  }
  SideState<scalar_t> state;
  state.kept = block_all_reduce(kept, SumOp());
  if (state.kept == 0) return state;  // the same value in every thread: no divergent barrier
  state.maximum = block_all_reduce(maximum, KeptMaxOp());
  scalar_t exp_sum = scalar_t(0), term_sum = scalar_t(0);
  int64_t positive_terms = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    scalar_t x;
    if (!kept_logit(j, x)) continue;
    exp_sum += exp_of(x, state.maximum);
    add_term(x, term_sum, positive_terms);
  }
  state.exp_sum = block_all_reduce(exp_sum, SumOp());
  state.term_sum = block_all_reduce(term_sum, SumOp());
  state.positive_terms = block_all_reduce(positive_terms, SumOp());
  return state;
}

// The versus terms of row a's kept positives against its final reference (the CPU's
// positives_forward, versus branch): their sum and how many are > 0.
template <typename scalar_t>
__device__ void versus_sums(const Rule<scalar_t>& rule, const BandView<scalar_t>& band, const AnchorView<scalar_t>& anchors,
                            int64_t a, const scalar_t* g, const SideState<scalar_t>& positives,
                            const SideState<scalar_t>& negatives, scalar_t& term_sum, int64_t& positive_terms) {
  const SideRule<scalar_t>& side = rule.side[kPositives];
  const int64_t label = band.labels[a];
  const scalar_t hardest_negative = anchors.hardest_negative[a];
  VersusReferenceOf<scalar_t> ref{};
  own_reference(rule, positives, negatives, ref);
  const int64_t members = positives.kept + negatives.kept;
  scalar_t sum = scalar_t(0);
  int64_t positive = 0;
  for (int64_t j = threadIdx.x; j < band.n; j += blockDim.x) {
    if (j == a || band.labels[j] != label) continue;
    const SidePair<scalar_t> pair = side_pair(side, g[j]);
    if (!keeps(side, kPositives, pair.close, hardest_negative)) continue;
    if (rule.versus_partner) partner_reference(anchors.side[kNegatives][j], ref);
    const VersusTerm<scalar_t> term = versus_term(rule, ref, logit(side, pair.s), members);
    sum += term.term;
    positive += term.positive ? 1 : 0;
  }
  term_sum = block_all_reduce(sum, SumOp());
  positive_terms = block_all_reduce(positive, SumOp());
}

// ---- forward ---------------------------------------------------------------------------------------

template <typename scalar_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    forward_rows_kernel(Rule<scalar_t> rule, BandView<scalar_t> band, AnchorView<scalar_t> anchors) {
  const int64_t r = blockIdx.x, a = band.row_begin + r, n = band.n;
  const scalar_t* g = band.gram + r * n;
  const int64_t* labels = band.labels;
  const int64_t label = labels[a];
  const SideRule<scalar_t>& negative_side = rule.side[kNegatives];
  const SideRule<scalar_t>& positive_side = rule.side[kPositives];

  // The thresholds, on the negatives' closeness as the CPU reads both (hardest_positives, the tiles).
  scalar_t hardest_positive = std::numeric_limits<scalar_t>::infinity();
  scalar_t hardest_negative = -std::numeric_limits<scalar_t>::infinity();
  int64_t near = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    if (j == a) continue;
    const scalar_t close = side_pair(negative_side, g[j]).close;
    if (labels[j] == label) {
      hardest_positive = nan_min(hardest_positive, close);
    } else {
      hardest_negative = nan_max(hardest_negative, close);
    }
    if (band.squared != nullptr) near += near_duplicate(g[j], band.squared[a], band.squared[j]) ? 1 : 0;
  }
  hardest_positive = block_all_reduce(hardest_positive, NanMinOp());
  hardest_negative = block_all_reduce(hardest_negative, NanMaxOp());
  if (band.squared != nullptr) near = block_all_reduce(near, SumOp());

  // Negatives, filtered by the hardest positive.
  const bool negative_terms =
      !(negative_side.reduction == Reduction::kLse || negative_side.reduction == Reduction::kLseAddOne);
  const SideState<scalar_t> negatives = fold_side<scalar_t>(
      n,
      [&](int64_t j, scalar_t& x) {
        if (j == a || labels[j] == label) return false;
        const SidePair<scalar_t> pair = side_pair(negative_side, g[j]);
        if (!keeps(negative_side, kNegatives, pair.close, hardest_positive)) return false;
        x = logit(negative_side, pair.s);
        return true;
      },
      [](scalar_t x, scalar_t maximum) { return rule_exp(shifted(x, maximum)); },
      [&](scalar_t x, scalar_t& term_sum, int64_t& positive_terms) {
        const scalar_t term = negative_terms ? term_of(negative_side.term, x) : scalar_t(0);
        term_sum += term;
        positive_terms += term > scalar_t(0) ? 1 : 0;
      });

  // Positives, filtered by the hardest negative; their versus terms come once both states are final.
  const bool versus = positive_side.term == Term::kVersus;
  SideState<scalar_t> positives = fold_side<scalar_t>(
      n,
      [&](int64_t j, scalar_t& x) {
        if (j == a || labels[j] != label) return false;
        const SidePair<scalar_t> pair = side_pair(positive_side, g[j]);
        if (!keeps(positive_side, kPositives, pair.close, hardest_negative)) return false;
        x = logit(positive_side, pair.s);
        return true;
      },
      [](scalar_t x, scalar_t maximum) { return rule_exp(x - maximum); },
      [&](scalar_t x, scalar_t& term_sum, int64_t& positive_terms) {
        if (versus) return;
        const scalar_t term = term_of(positive_side.term, x);
        term_sum += term;
        positive_terms += term > scalar_t(0) ? 1 : 0;
      });
  if (versus && !rule.versus_partner && positives.kept > 0) {
    // Row-local: the reference is the anchor's own (the kept count is block-uniform).
    versus_sums(rule, band, anchors, a, g, positives, negatives, positives.term_sum, positives.positive_terms);
  }

  if (threadIdx.x == 0) {
    anchors.hardest_positive[a] = hardest_positive;
    anchors.hardest_negative[a] = hardest_negative;
    anchors.side[kNegatives][a] = negatives;
    anchors.side[kPositives][a] = positives;
    if (anchors.near_duplicates != nullptr) anchors.near_duplicates[a] = near;
  }
}

// With a partner: every anchor's negatives are final, so each positive's reference can be joined.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    versus_rows_kernel(Rule<scalar_t> rule, BandView<scalar_t> band, AnchorView<scalar_t> anchors) {
  const int64_t r = blockIdx.x, a = band.row_begin + r;
  const SideState<scalar_t> positives = anchors.side[kPositives][a];
  if (positives.kept == 0) return;  // block-uniform
  scalar_t term_sum;
  int64_t positive_terms;
  versus_sums(rule, band, anchors, a, band.gram + r * band.n, positives, anchors.side[kNegatives][a], term_sum,
              positive_terms);
  if (threadIdx.x == 0) {
    anchors.side[kPositives][a].term_sum = term_sum;
    anchors.side[kPositives][a].positive_terms = positive_terms;
  }
}

template <typename scalar_t>
__global__ void finish_kernel(Rule<scalar_t> rule, AnchorView<scalar_t> anchors, int64_t n, int32_t streams_count,
                              const bool* non_finite, scalar_t* loss_sums, int64_t* counted, int64_t* terms,
                              int64_t* positive_pairs, int64_t* negative_pairs) {
  const int64_t a = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (a >= n) return;
  const SideState<scalar_t> positives = anchors.side[kPositives][a];
  const SideState<scalar_t> negatives = anchors.side[kNegatives][a];
  const AnchorResult<scalar_t> result = finish_anchor(rule, positives, negatives);
  // Non-finite input: every anchor meets the bad row, so every sum is NaN (the reference's poison),
  // and the counts stay those of the pair structure.
  const bool poison = *non_finite;
  for (int32_t k = 0; k < streams_count; ++k) {
    loss_sums[k * n + a] = poison ? std::numeric_limits<scalar_t>::quiet_NaN() : result.loss[k];
    counted[k * n + a] = result.counted[k];
    terms[k * n + a] = result.terms[k];
  }
  positive_pairs[a] = positives.kept;
  negative_pairs[a] = negatives.kept;
}

// ---- gradient --------------------------------------------------------------------------------------

// Per anchor: d loss / d (side value) for weights w (row k of `weights` is stream k's), then each
// side's pair coefficients, as the CPU's gradient() starts.
template <typename scalar_t>
__global__ void coefficients_kernel(Rule<scalar_t> rule, AnchorView<scalar_t> anchors, int64_t n, const scalar_t* weights) {
  const int64_t a = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (a >= n) return;
  const SideState<scalar_t> positives = anchors.side[kPositives][a];
  const SideState<scalar_t> negatives = anchors.side[kNegatives][a];
  const scalar_t w0 = weights[a], w1 = weights[n + a];
  scalar_t value_slope[2];
  if (rule.over == Over::kAnchors) {
    const AnchorResult<scalar_t> result = finish_anchor(rule, positives, negatives);
    value_slope[kPositives] = weighted(w0, result.side_slope[kPositives]);
    value_slope[kNegatives] = weighted(w0, result.side_slope[kNegatives]);
  } else {
    value_slope[kPositives] = w0;
    value_slope[kNegatives] = rule.over == Over::kPairsOfEachSide ? w1 : scalar_t(0);
  }
  const PairCoefficients<scalar_t> k_positive =
      side_coefficients(rule.side[kPositives], positives, value_slope[kPositives]);
  const PairCoefficients<scalar_t> k_negative =
      side_coefficients(rule.side[kNegatives], negatives, value_slope[kNegatives]);
  anchors.coefficients[kPositives][a] = k_positive;
  anchors.coefficients[kNegatives][a] = k_negative;
  anchors.active[a] = (is_active(k_positive) || is_active(k_negative)) ? 1 : 0;
}

// The versus coefficient A_a of anchor a's reference softmax, gathered by row a's block: its own
// kept positives' q * own share, and, with a partner, q * partner share of every positive p whose
// row keeps the pair (p, a): that term's partner is a's negatives, its q is p's.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    versus_coefficients_kernel(Rule<scalar_t> rule, BandView<scalar_t> band, AnchorView<scalar_t> anchors) {
  const int64_t r = blockIdx.x, a = band.row_begin + r;
  const scalar_t* g = band.gram + r * band.n;
  const int64_t label = band.labels[a];
  const SideRule<scalar_t>& side = rule.side[kPositives];
  const PairCoefficients<scalar_t> own_k = anchors.coefficients[kPositives][a];
  const bool row_active = is_active(own_k);
  const SideState<scalar_t> own_positives = anchors.side[kPositives][a];
  const SideState<scalar_t> own_negatives = anchors.side[kNegatives][a];
  VersusReferenceOf<scalar_t> own_ref{};
  own_reference(rule, own_positives, own_negatives, own_ref);
  const int64_t own_members = own_positives.kept + own_negatives.kept;
  const scalar_t hardest_negative = anchors.hardest_negative[a];
  scalar_t own = scalar_t(0), partner = scalar_t(0);
  for (int64_t j = threadIdx.x; j < band.n; j += blockDim.x) {
    if (j == a || band.labels[j] != label) continue;
    const SidePair<scalar_t> pair = side_pair(side, g[j]);
    if (row_active && keeps(side, kPositives, pair.close, hardest_negative)) {
      if (rule.versus_partner) partner_reference(anchors.side[kNegatives][j], own_ref);
      const VersusTerm<scalar_t> term = versus_term(rule, own_ref, logit(side, pair.s), own_members);
      const scalar_t q = weighted(own_k.term_coefficient, term.slope);
      own += weighted(q, term.own_share);
    }
    if (!rule.versus_partner) continue;
    // The pair (j, a) as row j sees it (s_ja = s_aj up to the GEMM's rounding).
    const PairCoefficients<scalar_t> their_k = anchors.coefficients[kPositives][j];
    if (!is_active(their_k) || !keeps(side, kPositives, pair.close, anchors.hardest_negative[j])) continue;
    const SideState<scalar_t> their_positives = anchors.side[kPositives][j];
    const SideState<scalar_t> their_negatives = anchors.side[kNegatives][j];
    VersusReferenceOf<scalar_t> their_ref{};
    own_reference(rule, their_positives, their_negatives, their_ref);
    partner_reference(own_negatives, their_ref);
    const VersusTerm<scalar_t> term =
        versus_term(rule, their_ref, logit(side, pair.s), their_positives.kept + their_negatives.kept);
    const scalar_t q = weighted(their_k.term_coefficient, term.slope);
    partner += weighted(q, term.partner_share);
  }
  own = block_all_reduce(own, SumOp());
  partner = block_all_reduce(partner, SumOp());
  if (threadIdx.x == 0) {
    anchors.own_total[a] = own;
    anchors.versus_total[a] = own + partner;
  }
}

// The negatives' coefficients gain A_a times the reference softmax weight
// e^{x_n - L_a} = e^{x_n - shift_a} e^{shift_a - L_a}.
template <typename scalar_t>
__global__ void versus_negatives_kernel(Rule<scalar_t> rule, AnchorView<scalar_t> anchors, int64_t n) {
  const int64_t a = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (a >= n) return;
  const SideState<scalar_t> negatives = anchors.side[kNegatives][a];
  const scalar_t total = anchors.versus_total[a];
  if (negatives.kept == 0 || total == scalar_t(0)) return;
  // L_a: the negatives' log-sum-exp, or the positives' and negatives' merged (own_reference's).
  VersusReferenceOf<scalar_t> ref{};
  own_reference(rule, anchors.side[kPositives][a], negatives, ref);
  const scalar_t normalizer = ref.own_shift + ref.own_log_sum;
  PairCoefficients<scalar_t>& k = anchors.coefficients[kNegatives][a];
  k.shift = negatives.maximum;
  k.exp_coefficient += total * rule_exp(negatives.maximum - normalizer);
}

// W[r, j]: anchor a's own weight on the Gram entry of pair (a, j); 0 off its kept pairs.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    pair_weights_kernel(Rule<scalar_t> rule, BandView<scalar_t> band, AnchorView<scalar_t> anchors, scalar_t* weights) {
  const int64_t r = blockIdx.x, a = band.row_begin + r, n = band.n;
  const scalar_t* g = band.gram + r * n;
  scalar_t* w_row = weights + r * n;
  const int64_t label = band.labels[a];
  const SideRule<scalar_t>& positive_side = rule.side[kPositives];
  const SideRule<scalar_t>& negative_side = rule.side[kNegatives];
  const PairCoefficients<scalar_t> k_positive = anchors.coefficients[kPositives][a];
  const PairCoefficients<scalar_t> k_negative = anchors.coefficients[kNegatives][a];
  const bool positive_active = is_active(k_positive);
  const bool versus = positive_side.term == Term::kVersus;
  const scalar_t hardest_positive = anchors.hardest_positive[a];
  const scalar_t hardest_negative = anchors.hardest_negative[a];
  const SideState<scalar_t> positives = anchors.side[kPositives][a];
  const SideState<scalar_t> negatives = anchors.side[kNegatives][a];
  VersusReferenceOf<scalar_t> ref{};
  own_reference(rule, positives, negatives, ref);
  const int64_t members = positives.kept + negatives.kept;
  const scalar_t normalizer = ref.own_shift + ref.own_log_sum;
  const scalar_t own_total = versus ? anchors.own_total[a] : scalar_t(0);
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    scalar_t w = scalar_t(0);
    if (j != a && band.labels[j] == label) {
      const SidePair<scalar_t> pair = side_pair(positive_side, g[j]);
      if (positive_active && keeps(positive_side, kPositives, pair.close, hardest_negative)) {
        const scalar_t x = logit(positive_side, pair.s);
        scalar_t dx;
        if (versus) {
          if (rule.versus_partner) partner_reference(anchors.side[kNegatives][j], ref);
          const VersusTerm<scalar_t> term = versus_term(rule, ref, x, members);
          dx = -weighted(k_positive.term_coefficient, term.slope);
          if (rule.versus_reference == VersusReference::kPositivesAndNegatives && own_total != scalar_t(0)) {
            // The positives are members of the reference softmax too: A_a e^{x_p - L_a}.
            dx += own_total * rule_exp(x - normalizer);
          }
        } else {
          const scalar_t e =
              k_positive.exp_coefficient == scalar_t(0) ? scalar_t(0) : rule_exp(x - k_positive.shift);
          dx = pair_logit_gradient(k_positive, positive_side.term, x, e);
        }
        w = gram_weight(positive_side, pair.s, dx);
      }
    } else if (j != a) {
      const SidePair<scalar_t> pair = side_pair(negative_side, g[j]);
      if (keeps(negative_side, kNegatives, pair.close, hardest_positive)) {
        const scalar_t x = logit(negative_side, pair.s);
        const scalar_t e =
            k_negative.exp_coefficient == scalar_t(0) ? scalar_t(0) : rule_exp(shifted(x, k_negative.shift));
        w = gram_weight(negative_side, pair.s, pair_logit_gradient(k_negative, negative_side.term, x, e));
      }
    }
    w_row[j] = w;
  }
}

// ---- host ------------------------------------------------------------------------------------------

template <typename scalar_t>
struct Interpreter {
  Rule<scalar_t> rule;
  RuleOperands operands;
  at::Tensor labels, squared, gram_buffer;
  at::Tensor thresholds, states, near_duplicates, coefficients, totals, active;
  AnchorView<scalar_t> view{};
  int64_t n, dim, block;
  cudaStream_t stream;

  Interpreter(const Rule<scalar_t>& rule_, const at::Tensor& embeddings, const at::Tensor& labels_)
      : rule(rule_),
        operands(rule_operands(embeddings, rule_.side[0].normalize, is_distance(rule_.side[0].measure))),
        labels(labels_.contiguous()),
        n(embeddings.size(0)),
        dim(embeddings.size(1)),
        block(row_block_size(embeddings.size(0), embeddings.size(0))),
        stream(at::cuda::getCurrentCUDAStream()) {
    const auto options = operands.unit.options();
    const auto bytes = options.dtype(at::kByte);
    thresholds = at::empty({2 * n}, options);
    states = at::empty({static_cast<int64_t>(2 * n * sizeof(SideState<scalar_t>))}, bytes);
    coefficients = at::empty({static_cast<int64_t>(2 * n * sizeof(PairCoefficients<scalar_t>))}, bytes);
    totals = at::zeros({2 * n}, options);
    active = at::empty({n}, bytes);
    gram_buffer = at::empty({block, n}, options);
    view.hardest_positive = thresholds.data_ptr<scalar_t>();
    view.hardest_negative = view.hardest_positive + n;
    auto* side = reinterpret_cast<SideState<scalar_t>*>(states.data_ptr<uint8_t>());
    view.side[kPositives] = side;
    view.side[kNegatives] = side + n;
    auto* k = reinterpret_cast<PairCoefficients<scalar_t>*>(coefficients.data_ptr<uint8_t>());
    view.coefficients[kPositives] = k;
    view.coefficients[kNegatives] = k + n;
    view.own_total = totals.data_ptr<scalar_t>();
    view.versus_total = view.own_total + n;
    view.active = active.data_ptr<uint8_t>();
    if (operands.distance) {
      squared = operands.left.select(1, dim).contiguous();
      near_duplicates = at::zeros({n}, labels.options());
      view.near_duplicates = near_duplicates.data_ptr<int64_t>();
    }
  }

  // For every band in order: its GEMM into the buffer, then `visit(band, rows)`.
  template <typename Visit>
  void for_each_band(Visit&& visit) {
    for (int64_t row_begin = 0; row_begin < n; row_begin += block) {
      const int64_t rows = std::min(block, n - row_begin);
      auto gram = gram_buffer.narrow(0, 0, rows);
      at::mm_out(gram, operands.left.narrow(0, row_begin, rows), operands.right.t());
      const BandView<scalar_t> band{gram.data_ptr<scalar_t>(), row_begin, n, labels.data_ptr<int64_t>(),
                                    operands.distance ? squared.data_ptr<scalar_t>() : nullptr};
      visit(band, rows);
    }
  }

  unsigned anchor_blocks() const { return static_cast<unsigned>(ceil_div(n, kThreadsPerBlock)); }

  void forward() {
    for_each_band([&](const BandView<scalar_t>& band, int64_t rows) {
      forward_rows_kernel<scalar_t><<<static_cast<unsigned>(rows), kThreadsPerBlock, 0, stream>>>(rule, band, view);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    if (rule.side[kPositives].term == Term::kVersus && rule.versus_partner) {
      for_each_band([&](const BandView<scalar_t>& band, int64_t rows) {
        versus_rows_kernel<scalar_t><<<static_cast<unsigned>(rows), kThreadsPerBlock, 0, stream>>>(rule, band, view);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
  }

  // The gradient of sum_a (w_s[a] * stream s's value of a), weights [2, N] on the device.
  at::Tensor gradient(const at::Tensor& weights) {
    const auto options = operands.unit.options();
    const auto w = weights.contiguous();
    coefficients_kernel<scalar_t><<<anchor_blocks(), kThreadsPerBlock, 0, stream>>>(rule, view, n, w.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // As the CPU: no weight on any pair, no accumulator (a zero gradient even for non-finite rows).
    if (!active.ne(0).any().item<bool>()) return at::zeros({n, dim}, options);
    if (rule.side[kPositives].term == Term::kVersus) {
      for_each_band([&](const BandView<scalar_t>& band, int64_t rows) {
        versus_coefficients_kernel<scalar_t><<<static_cast<unsigned>(rows), kThreadsPerBlock, 0, stream>>>(rule, band,
                                                                                                           view);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      versus_negatives_kernel<scalar_t><<<anchor_blocks(), kThreadsPerBlock, 0, stream>>>(rule, view, n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    auto pair_total = at::zeros({n, dim}, options);
    auto self_total = at::zeros({n}, options);
    auto weight_buffer = at::empty({block, n}, options);
    const at::Tensor& unit = operands.unit;
    for_each_band([&](const BandView<scalar_t>& band, int64_t rows) {
      auto m = weight_buffer.narrow(0, 0, rows);
      pair_weights_kernel<scalar_t><<<static_cast<unsigned>(rows), kThreadsPerBlock, 0, stream>>>(
          rule, band, view, m.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      // W holds only the band rows' own weights: pair (a, j) reaches u_a through W U and u_j through W^T U_band.
      pair_total.narrow(0, band.row_begin, rows).addmm_(m, unit);
      pair_total.addmm_(m.t(), unit.narrow(0, band.row_begin, rows));
      if (operands.distance) {
        self_total.narrow(0, band.row_begin, rows).add_(m.sum(1));
        self_total.add_(m.sum(0));
      }
    });
    return gradient_of_rows(operands, pair_total, self_total);
  }
};

constexpr const char* kForwardOp = "pair_rule_forward";
constexpr const char* kBackwardOp = "_pair_rule_backward";

void check_inputs(const char* op, const at::Tensor& embeddings, const at::Tensor& labels, c10::ArrayRef<double> params,
                  c10::ArrayRef<int64_t> codes) {
  check_floating_inputs(op, {{"embeddings", &embeddings}});
  check_int64_input(op, "labels", labels);
  check_same_cuda_device(op, {{"embeddings", &embeddings}, {"labels", &labels}});
  check_embeddings_and_labels(embeddings, labels, "CUDA");
  check_encoded_rule(op, params, codes);
}

using ForwardOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

ForwardOutputs pair_rule_forward_cuda(const at::Tensor& embeddings, const at::Tensor& labels,
                                      c10::ArrayRef<double> params, c10::ArrayRef<int64_t> codes, bool compute_grad) {
  check_inputs(kForwardOp, embeddings, labels, params, codes);
  // After every check: a guard on a bad input's device would act before the error.
  const at::cuda::CUDAGuard guard(embeddings.device());
  const int64_t n = embeddings.size(0);
  ForwardOutputs out;
  AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "pair_rule_forward_cuda", [&] {
    const Rule<scalar_t> rule = decode<scalar_t>(codes.data(), params.data());
    Interpreter<scalar_t> f(rule, embeddings, labels);
    f.forward();
    const int32_t s = streams(rule);
    const auto label_options = labels.options();
    auto loss_sums = at::empty({s, n}, embeddings.options());
    auto counted = at::empty({s, n}, label_options);
    auto terms = at::empty({s, n}, label_options);
    auto positive_pairs = at::empty({n}, label_options);
    auto negative_pairs = at::empty({n}, label_options);
    // On the device: no host synchronisation for a flag every anchor reads.
    const at::Tensor non_finite = f.operands.x.isfinite().all().logical_not();
    finish_kernel<scalar_t><<<f.anchor_blocks(), kThreadsPerBlock, 0, f.stream>>>(
        rule, f.view, n, s, non_finite.data_ptr<bool>(), loss_sums.data_ptr<scalar_t>(), counted.data_ptr<int64_t>(),
        terms.data_ptr<int64_t>(), positive_pairs.data_ptr<int64_t>(), negative_pairs.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    at::Tensor unit_grad = at::empty({0}, embeddings.options());
    if (compute_grad) {
      unit_grad = at::empty({s, n, embeddings.size(1)}, embeddings.options());
      for (int32_t k = 0; k < s; ++k) {
        auto weights = at::zeros({2, n}, embeddings.options());
        weights[k].fill_(1);
        unit_grad[k].copy_(f.gradient(weights));
      }
    }
    const at::Tensor near_duplicates =
        f.operands.distance ? f.near_duplicates.sum() : at::zeros({}, label_options);
    out = {loss_sums, counted, terms, positive_pairs, negative_pairs, unit_grad, near_duplicates};
  });
  return out;
}

at::Tensor pair_rule_backward_cuda(const at::Tensor& grad_loss_sums, const at::Tensor& embeddings,
                                   const at::Tensor& labels, const at::Tensor& unit_grad, c10::ArrayRef<double> params,
                                   c10::ArrayRef<int64_t> codes) {
  check_inputs(kBackwardOp, embeddings, labels, params, codes);
  check_floating_inputs(kBackwardOp, {{"grad_loss_sums", &grad_loss_sums}});
  check_same_cuda_device(kBackwardOp,
                         {{"embeddings", &embeddings}, {"grad_loss_sums", &grad_loss_sums}, {"unit_grad", &unit_grad}});
  const int64_t n = embeddings.size(0);
  const int64_t s = codes[2 * kSideCodes + 6] == static_cast<int64_t>(Over::kPairsOfEachSide) ? 2 : 1;
  TORCH_CHECK(grad_loss_sums.dim() == 2 && grad_loss_sums.size(0) == s && grad_loss_sums.size(1) == n,
              "embedplug::", kBackwardOp, ": grad_loss_sums must be [", s, ", ", n, "], got ", grad_loss_sums.sizes());
  const at::cuda::CUDAGuard guard(embeddings.device());
  const auto grad = grad_loss_sums.detach().to(embeddings.scalar_type());
  if (auto scaled = scaled_unit_gradient(grad, unit_grad)) return *scaled;
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "pair_rule_backward_cuda", [&] {
    const Rule<scalar_t> rule = decode<scalar_t>(codes.data(), params.data());
    Interpreter<scalar_t> f(rule, embeddings, labels);
    f.forward();
    auto weights = at::zeros({2, n}, embeddings.options());
    weights.narrow(0, 0, s).copy_(grad);
    out = f.gradient(weights);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(embedplug, CUDA, m) {
  m.impl(kForwardOp, &pair_rule_forward_cuda);
  m.impl(kBackwardOp, &pair_rule_backward_cuda);
}

}  // namespace cuda
}  // namespace embedplug
