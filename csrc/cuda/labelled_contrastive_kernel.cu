// CUDA kernels of the label-aware contrastive losses (SupCon, MultiSimilarity with or without
// MultiSimilarityMiner, Circle): the CPU kernel's algorithm (csrc/cpu/labelled_contrastive_tiles.h)
// with its rules (csrc/labelled_contrastive_rules.h), on bands instead of square tiles.
//
// A band is a block of R rows [r0, r0 + R) against every column from r0 on: one cuBLAS GEMM
// (at::mm_out on the current stream) of the unit rows into a reused, bounded buffer. Its first R
// columns are the diagonal tile, the rest the upper-triangular tiles right of it, so every unordered
// pair is computed once per pass and feeds both of its rows:
//   the row side   one thread block per band row folds every column of the row (diagonal tile
//                  included, the anchor's own column skipped);
//   the column side one thread per off-diagonal column folds the band's R rows into that
//                  column's state, reading the band row by row (coalesced along the columns).
// Passes, each over every band in order on one stream (no atomics: deterministic):
//   scan  with the miner only: each row's hardest positive and negative (PairRule::keeps needs
//         them final before any pair is kept or dropped);
//   lse   per row and group the online log-sum-exp of the kept logits (infonce::RunningLogSumExp,
//         the CPU's merge), kept counts and SupCon's positive-logit sum;
//   finish one thread per row: rules::group_sums_of, finish_row, the row weight, row_gradient;
//   grad  M[r, c] = W[a, j] + W[j, a] from rules::pair_gradient, written over the band, then
//         G[band rows] += M U[r0:] and G[columns right of the diagonal tile] += M^T U[band rows];
//         the chain rule through normalize is finish_pair_gradient's, as on CPU.
// Multiply-adds: N^2 D / 2 per pass over the bands and N^2 D for the gradient GEMMs, as on CPU.
// Memory: one band buffer (row_block_size), O(N) row states, one N x D gradient.
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include <optional>

#include "cuda/block_reduce.cuh"
#include "cuda/cuda_common.cuh"
#include "infonce_rules.h"
#include "labelled_contrastive_common.h"
#include "labelled_contrastive_rules.h"
#include "op_input_checks.h"
#include "pairwise_common.h"

namespace embedplug {
namespace cuda {
namespace {

using namespace labelled_contrastive;
using infonce::RunningLogSumExp;
using rules::ContrastiveLoss;
using rules::ContrastiveParams;
using rules::GroupSums;
using rules::kNegativeGroup;
using rules::kPositiveGroup;
using rules::PairRule;
using rules::RowResult;

// Row weight modes: none (forward without gradient), 1 on the anchors the reducer counts (the
// forward's unit gradient), or the incoming gradient per anchor (backward).
enum class RowWeights : int { kNone = 0, kUnitOnCounted = 1, kIncoming = 2 };

// Per-row state in device memory, [N] each (the pointer arrays index the group).
template <typename scalar_t>
struct RowStates {
  scalar_t* hardest_positive;  // the miner's thresholds (null without the miner)
  scalar_t* hardest_negative;
  scalar_t* maximum[2];  // lse pass: per group the online log-sum-exp state
  scalar_t* exp_sum[2];
  int64_t* kept[2];
  scalar_t* positive_logit_sum;
  scalar_t* coefficient[2];  // finish: rules::RowGradient, read by the grad pass
  scalar_t* positive_offset;
};

// One band: rows [row_begin, row_begin + rows) against columns [row_begin, n), [rows, width) row-major.
template <typename scalar_t>
struct Band {
  scalar_t* s;
  int64_t row_begin, rows, width;
  const int64_t* labels;
};

template <typename scalar_t>
__device__ inline scalar_t row_threshold(const scalar_t* thresholds, int64_t a) {
  return thresholds == nullptr ? scalar_t(0) : thresholds[a];
}

struct MinOp {
  template <typename T>
  __device__ T operator()(const T& a, const T& b) const {
    return rules::rule_min(a, b);
  }
};
struct MaxOp {
  template <typename T>
  __device__ T operator()(const T& a, const T& b) const {
    return rules::rule_max(a, b);
  }
};

// scan, row side: the row's hardest positive / negative over the band, the anchor's own column left out.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreadsPerBlock) scan_rows_kernel(Band<scalar_t> band, RowStates<scalar_t> states) {
  using Reduce = cub::BlockReduce<scalar_t, kThreadsPerBlock>;
  __shared__ typename Reduce::TempStorage temp;
  const int64_t r = blockIdx.x, a = band.row_begin + r;
  const int64_t label = band.labels[a];
  const scalar_t* row = band.s + r * band.width;
  scalar_t hardest_positive = rules::rule_infinity<scalar_t>(), hardest_negative = -rules::rule_infinity<scalar_t>();
  for (int64_t c = threadIdx.x; c < band.width; c += blockDim.x) {
    if (c == r) continue;
    if (band.labels[band.row_begin + c] == label) {
      hardest_positive = rules::rule_min(hardest_positive, row[c]);
    } else {
      hardest_negative = rules::rule_max(hardest_negative, row[c]);
    }
  }
  const scalar_t positive = Reduce(temp).Reduce(hardest_positive, MinOp());
  __syncthreads();
  const scalar_t negative = Reduce(temp).Reduce(hardest_negative, MaxOp());
  if (threadIdx.x == 0) {
    states.hardest_positive[a] = rules::rule_min(states.hardest_positive[a], positive);
    states.hardest_negative[a] = rules::rule_max(states.hardest_negative[a], negative);
  }
}

// scan, column side: each off-diagonal column's hardest positive / negative over the band's rows.
template <typename scalar_t>
__global__ void scan_columns_kernel(Band<scalar_t> band, RowStates<scalar_t> states) {
  const int64_t c = band.rows + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= band.width) return;
  const int64_t j = band.row_begin + c;
  const int64_t label = band.labels[j];
  scalar_t hardest_positive = rules::rule_infinity<scalar_t>(), hardest_negative = -rules::rule_infinity<scalar_t>();
  for (int64_t r = 0; r < band.rows; ++r) {
    const scalar_t s = band.s[r * band.width + c];
    if (band.labels[band.row_begin + r] == label) {
      hardest_positive = rules::rule_min(hardest_positive, s);
    } else {
      hardest_negative = rules::rule_max(hardest_negative, s);
    }
  }
  states.hardest_positive[j] = rules::rule_min(states.hardest_positive[j], hardest_positive);
  states.hardest_negative[j] = rules::rule_max(states.hardest_negative[j], hardest_negative);
}

// What one side of the lse pass folds per row: a log-sum-exp per group, kept counts, SupCon's sum.
template <typename scalar_t>
struct GroupFold {
  RunningLogSumExp<scalar_t> group[2] = {RunningLogSumExp<scalar_t>::empty(), RunningLogSumExp<scalar_t>::empty()};
  int64_t kept[2] = {0, 0};
  scalar_t positive_logit_sum = scalar_t(0);

  template <ContrastiveLoss Loss, bool Mine>
  __device__ void add(const PairRule<Loss, Mine, scalar_t>& rule, scalar_t s, bool same, scalar_t hardest_positive,
                      scalar_t hardest_negative) {
    if (!rule.keeps(s, same, hardest_positive, hardest_negative)) return;
    const scalar_t logit = rule.logit(s, same);
    const int g = PairRule<Loss, Mine, scalar_t>::in_positive_group(same) ? kPositiveGroup : kNegativeGroup;
    group[g].add_logit(logit);
    ++kept[g];
    if (Loss == ContrastiveLoss::kSupCon && same) positive_logit_sum += logit;
  }

  // Merges the fold into row a's state in device memory.
  __device__ void store(const RowStates<scalar_t>& states, int64_t a) const {
    for (int g = 0; g < 2; ++g) {
      RunningLogSumExp<scalar_t> state = RunningLogSumExp<scalar_t>::of(states.maximum[g][a], states.exp_sum[g][a]);
      state.merge(group[g]);
      states.maximum[g][a] = state.maximum;
      states.exp_sum[g][a] = state.sum;
      states.kept[g][a] += kept[g];
    }
    states.positive_logit_sum[a] += positive_logit_sum;
  }
};

// lse, row side.
template <ContrastiveLoss Loss, bool Mine, typename scalar_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    lse_rows_kernel(PairRule<Loss, Mine, scalar_t> rule, Band<scalar_t> band, RowStates<scalar_t> states) {
  using CountReduce = cub::BlockReduce<int64_t, kThreadsPerBlock>;
  using ScalarReduce = cub::BlockReduce<scalar_t, kThreadsPerBlock>;
  __shared__ union {
    typename CountReduce::TempStorage count;
    typename ScalarReduce::TempStorage scalar;
  } temp;
  const int64_t r = blockIdx.x, a = band.row_begin + r;
  const int64_t label = band.labels[a];
  const scalar_t hardest_positive = row_threshold(states.hardest_positive, a);
  const scalar_t hardest_negative = row_threshold(states.hardest_negative, a);
  const scalar_t* row = band.s + r * band.width;
  GroupFold<scalar_t> fold;
  for (int64_t c = threadIdx.x; c < band.width; c += blockDim.x) {
    if (c == r) continue;
    fold.add(rule, row[c], band.labels[band.row_begin + c] == label, hardest_positive, hardest_negative);
  }
  GroupFold<scalar_t> total;
  for (int g = 0; g < 2; ++g) {
    total.group[g] = reduce_row_state(fold.group[g]);
    __syncthreads();
    total.kept[g] = CountReduce(temp.count).Sum(fold.kept[g]);
    __syncthreads();
  }
  total.positive_logit_sum = ScalarReduce(temp.scalar).Sum(fold.positive_logit_sum);
  if (threadIdx.x == 0) total.store(states, a);
}

// lse, column side: each off-diagonal column applies its own thresholds to the band's rows.
template <ContrastiveLoss Loss, bool Mine, typename scalar_t>
__global__ void lse_columns_kernel(PairRule<Loss, Mine, scalar_t> rule, Band<scalar_t> band, RowStates<scalar_t> states) {
  const int64_t c = band.rows + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= band.width) return;
  const int64_t j = band.row_begin + c;
  const int64_t label = band.labels[j];
  const scalar_t hardest_positive = row_threshold(states.hardest_positive, j);
  const scalar_t hardest_negative = row_threshold(states.hardest_negative, j);
  GroupFold<scalar_t> fold;
  for (int64_t r = 0; r < band.rows; ++r) {
    fold.add(rule, band.s[r * band.width + c], band.labels[band.row_begin + r] == label, hardest_positive,
             hardest_negative);
  }
  fold.store(states, j);
}

// finish: one thread per anchor.
template <typename scalar_t>
__global__ void finish_kernel(ContrastiveParams<scalar_t> p, RowStates<scalar_t> states, int64_t n,
                              const int64_t* __restrict__ class_size, const bool* __restrict__ non_finite,
                              RowWeights mode, const scalar_t* __restrict__ incoming, scalar_t* __restrict__ losses,
                              int64_t* __restrict__ positive_pairs, int64_t* __restrict__ negative_pairs) {
  const int64_t a = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (a >= n) return;
  const rules::FinishedRow<scalar_t> finished = rules::finish_anchor(
      p, class_size[a], n, *non_finite,
      RunningLogSumExp<scalar_t>::of(states.maximum[kPositiveGroup][a], states.exp_sum[kPositiveGroup][a]),
      RunningLogSumExp<scalar_t>::of(states.maximum[kNegativeGroup][a], states.exp_sum[kNegativeGroup][a]),
      states.kept[kPositiveGroup][a], states.kept[kNegativeGroup][a], states.positive_logit_sum[a]);
  const GroupSums<scalar_t>& sums = finished.sums;
  const RowResult<scalar_t>& result = finished.result;
  losses[a] = result.loss;
  positive_pairs[a] = result.positive_pairs;
  negative_pairs[a] = result.negative_pairs;
  if (mode == RowWeights::kNone) return;
  scalar_t weight = incoming == nullptr ? scalar_t(0) : incoming[a];
  if (mode == RowWeights::kUnitOnCounted) {
    weight = rules::counted_by_reducer(p, result.positive_pairs, result.negative_pairs, result.loss) ? scalar_t(1)
                                                                                                    : scalar_t(0);
  }
  const rules::RowGradient<scalar_t> row = rules::row_gradient(sums, result, weight);
  for (int g = 0; g < 2; ++g) {
    states.maximum[g][a] = row.maximum[g];
    states.coefficient[g][a] = row.coefficient[g];
  }
  states.positive_offset[a] = row.positive_offset;
}

// W[a, j] of one side: row `owner`'s thresholds, shift, coefficient and offset on the pair.
template <ContrastiveLoss Loss, bool Mine, typename scalar_t>
__device__ inline scalar_t side_gradient(const PairRule<Loss, Mine, scalar_t>& rule, const RowStates<scalar_t>& states,
                                         int64_t owner, scalar_t s, bool same, bool other) {
  const bool keep = rule.keeps(s, same, row_threshold(states.hardest_positive, owner),
                               row_threshold(states.hardest_negative, owner)) & other;
  const int g = PairRule<Loss, Mine, scalar_t>::in_positive_group(same) ? kPositiveGroup : kNegativeGroup;
  const scalar_t exp_shifted = rules::rule_exp(rules::shifted_logit(keep, rule.logit(s, same), states.maximum[g][owner]));
  return rules::pair_gradient<Loss>(keep, same, other, states.coefficient[g][owner], exp_shifted, rule.slope(s, same),
                                    states.positive_offset[owner]);
}

// grad: the band becomes M = W + W^T (the anchor's own entry 0). In the diagonal tile each
// unordered pair appears twice, each time whole, as on CPU.
template <ContrastiveLoss Loss, bool Mine, typename scalar_t>
__global__ void pair_weights_kernel(PairRule<Loss, Mine, scalar_t> rule, Band<scalar_t> band, RowStates<scalar_t> states) {
  const int64_t entries = band.rows * band.width;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < entries;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = index / band.width, c = index % band.width;
    const int64_t a = band.row_begin + r, j = band.row_begin + c;
    const scalar_t s = band.s[index];
    const bool same = band.labels[a] == band.labels[j];
    const bool other = c != r;
    band.s[index] = side_gradient(rule, states, a, s, same, other) + side_gradient(rule, states, j, s, same, other);
  }
}

struct ContrastiveOutputs {
  at::Tensor losses, positive_pairs, negative_pairs, unit_grad;
};

// The per-row state arrays, allocated on the embeddings' device.
template <typename scalar_t>
struct RowStateTensors {
  at::Tensor thresholds, groups, kept, coefficients;
  RowStates<scalar_t> view;

  RowStateTensors(int64_t n, bool mine, const at::TensorOptions& options) {
    const double inf = std::numeric_limits<double>::infinity();
    // [hardest_positive | hardest_negative], [maximum x2 | exp_sum x2 | positive_logit_sum | offset], [kept x2]
    thresholds = mine ? at::cat({at::full({n}, inf, options), at::full({n}, -inf, options)}) : at::Tensor();
    groups = at::cat({at::full({2 * n}, -inf, options), at::zeros({4 * n}, options)});
    kept = at::zeros({2 * n}, options.dtype(at::kLong));
    coefficients = at::zeros({2 * n}, options);
    scalar_t* t = mine ? thresholds.data_ptr<scalar_t>() : nullptr;
    scalar_t* g = groups.data_ptr<scalar_t>();
    int64_t* k = kept.data_ptr<int64_t>();
    scalar_t* w = coefficients.data_ptr<scalar_t>();
    view.hardest_positive = t;
    view.hardest_negative = mine ? t + n : nullptr;
    view.maximum[0] = g;
    view.maximum[1] = g + n;
    view.exp_sum[0] = g + 2 * n;
    view.exp_sum[1] = g + 3 * n;
    view.positive_logit_sum = g + 4 * n;
    view.positive_offset = g + 5 * n;
    view.kept[0] = k;
    view.kept[1] = k + n;
    view.coefficient[0] = w;
    view.coefficient[1] = w + n;
  }
};

template <ContrastiveLoss Loss, bool Mine, typename scalar_t>
ContrastiveOutputs run_bands(const at::Tensor& embeddings, const at::Tensor& labels, const ContrastiveOptions& options,
                             RowWeights mode, const at::Tensor& incoming) {
  const auto x = embeddings.detach().contiguous();
  const auto label_values = labels.contiguous();
  const int64_t n = x.size(0), dim = x.size(1);
  const at::Tensor unit = prepare_operand(x, DistanceKind::kCosine).rows;
  const PairRule<Loss, Mine, scalar_t> rule{options.params<scalar_t>()};
  RowStateTensors<scalar_t> states(n, Mine, x.options());
  const int64_t block = row_block_size(n, n);
  auto buffer = at::empty({block * n}, x.options());
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t* label_ptr = label_values.data_ptr<int64_t>();

  // One pass: for every band in order, its GEMM and then `visit(band)`.
  auto for_each_band = [&](auto&& visit) {
    for (int64_t row_begin = 0; row_begin < n; row_begin += block) {
      const int64_t rows = std::min(block, n - row_begin), width = n - row_begin;
      auto band = buffer.narrow(0, 0, rows * width).view({rows, width});
      at::mm_out(band, unit.narrow(0, row_begin, rows), unit.narrow(0, row_begin, width).t());
      visit(band, Band<scalar_t>{band.template data_ptr<scalar_t>(), row_begin, rows, width, label_ptr});
    }
  };
  auto column_blocks = [](const Band<scalar_t>& band) {
    return static_cast<unsigned>(std::max<int64_t>(ceil_div(band.width - band.rows, kThreadsPerBlock), 1));
  };
  if (Mine) {
    for_each_band([&](const at::Tensor&, const Band<scalar_t>& band) {
      scan_rows_kernel<scalar_t><<<static_cast<unsigned>(band.rows), kThreadsPerBlock, 0, stream>>>(band, states.view);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (band.width > band.rows) {
        scan_columns_kernel<scalar_t><<<column_blocks(band), kThreadsPerBlock, 0, stream>>>(band, states.view);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  for_each_band([&](const at::Tensor&, const Band<scalar_t>& band) {
    lse_rows_kernel<<<static_cast<unsigned>(band.rows), kThreadsPerBlock, 0, stream>>>(rule, band, states.view);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (band.width > band.rows) {
      lse_columns_kernel<<<column_blocks(band), kThreadsPerBlock, 0, stream>>>(rule, band, states.view);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });

  ContrastiveOutputs out;
  out.losses = at::empty({n}, x.options());
  out.positive_pairs = at::empty({n}, x.options().dtype(at::kLong));
  out.negative_pairs = at::empty({n}, x.options().dtype(at::kLong));
  out.unit_grad = at::empty({0}, x.options());
  const at::Tensor class_size = class_sizes(label_values);
  // On the device: no host synchronisation for a flag every row reads.
  const at::Tensor non_finite = unit.isfinite().all().logical_not();
  const at::Tensor weights = mode == RowWeights::kIncoming ? incoming.to(x.scalar_type()).contiguous() : at::Tensor();
  finish_kernel<scalar_t><<<static_cast<unsigned>(ceil_div(n, kThreadsPerBlock)), kThreadsPerBlock, 0, stream>>>(
      rule.p, states.view, n, class_size.data_ptr<int64_t>(), non_finite.data_ptr<bool>(), mode,
      weights.defined() ? weights.data_ptr<scalar_t>() : nullptr, out.losses.data_ptr<scalar_t>(),
      out.positive_pairs.data_ptr<int64_t>(), out.negative_pairs.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (mode == RowWeights::kNone) return out;

  auto pair_total = at::zeros({n, dim}, x.options());
  for_each_band([&](const at::Tensor& band_tensor, const Band<scalar_t>& band) {
    const int64_t entries = band.rows * band.width;
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>(ceil_div(entries, kThreadsPerBlock), 65535));
    pair_weights_kernel<<<grid, kThreadsPerBlock, 0, stream>>>(rule, band, states.view);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    pair_total.narrow(0, band.row_begin, band.rows).addmm_(band_tensor, unit.narrow(0, band.row_begin, band.width));
    if (band.width > band.rows) {
      pair_total.narrow(0, band.row_begin + band.rows, band.width - band.rows)
          .addmm_(band_tensor.narrow(1, band.rows, band.width - band.rows).t(),
                  unit.narrow(0, band.row_begin, band.rows));
    }
  });
  // d/du_a = G_a = sum_j M_aj u_j; through normalize as on CPU (finish_pair_gradient's cosine step
  // with distance weights -M, one epsilon for every kernel).
  const auto self_total = unit.mul(pair_total).sum(1);
  out.unit_grad = finish_pair_gradient(x, unit, DistanceKind::kCosine, self_total.neg(), pair_total.neg());
  return out;
}

template <typename scalar_t>
ContrastiveOutputs run_contrastive(const at::Tensor& embeddings, const at::Tensor& labels,
                                   const ContrastiveOptions& options, RowWeights mode, const at::Tensor& incoming) {
  switch (options.loss) {
    case ContrastiveLoss::kSupCon:
      return run_bands<ContrastiveLoss::kSupCon, false, scalar_t>(embeddings, labels, options, mode, incoming);
    case ContrastiveLoss::kMultiSimilarity:
      if (options.mining_epsilon) {
        return run_bands<ContrastiveLoss::kMultiSimilarity, true, scalar_t>(embeddings, labels, options, mode, incoming);
      }
      return run_bands<ContrastiveLoss::kMultiSimilarity, false, scalar_t>(embeddings, labels, options, mode, incoming);
    case ContrastiveLoss::kCircle:
    default:
      return run_bands<ContrastiveLoss::kCircle, false, scalar_t>(embeddings, labels, options, mode, incoming);
  }
}

void check_inputs(const char* op, const at::Tensor& embeddings, const at::Tensor& labels) {
  check_floating_inputs(op, {{"embeddings", &embeddings}});
  check_int64_input(op, "labels", labels);
  check_same_cuda_device(op, {{"embeddings", &embeddings}, {"labels", &labels}});
  check_embeddings_and_labels(embeddings, labels, "CUDA");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrastive_forward(const char* op, const at::Tensor& embeddings,
                                                                               const at::Tensor& labels,
                                                                               const ContrastiveOptions& options,
                                                                               bool compute_grad) {
  check_inputs(op, embeddings, labels);
  // After every check: a guard on a bad input's device would act before the error.
  const at::cuda::CUDAGuard guard(embeddings.device());
  ContrastiveOutputs out;
  AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "labelled_contrastive_forward_cuda", [&] {
    out = run_contrastive<scalar_t>(embeddings, labels, options,
                                    compute_grad ? RowWeights::kUnitOnCounted : RowWeights::kNone, at::Tensor());
  });
  return {out.losses, out.positive_pairs, out.negative_pairs, out.unit_grad};
}

at::Tensor contrastive_backward(const char* op, const at::Tensor& grad_losses, const at::Tensor& embeddings,
                                const at::Tensor& labels, const at::Tensor& losses, const at::Tensor& unit_grad,
                                const ContrastiveOptions& options) {
  check_inputs(op, embeddings, labels);
  check_floating_inputs(op, {{"grad_losses", &grad_losses}});
  check_same_cuda_device(op, {{"embeddings", &embeddings}, {"grad_losses", &grad_losses}, {"losses", &losses}});
  const int64_t n = embeddings.size(0);
  TORCH_CHECK(grad_losses.dim() == 1 && grad_losses.size(0) == n && losses.dim() == 1 && losses.size(0) == n,
              "embedplug: grad_losses and losses must be [N]");
  const at::cuda::CUDAGuard guard(embeddings.device());
  if (auto scaled = scaled_unit_gradient(grad_losses, labels, losses, unit_grad, options)) return *scaled;
  at::Tensor grad;
  AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "labelled_contrastive_backward_cuda", [&] {
    grad = run_contrastive<scalar_t>(embeddings, labels, options, RowWeights::kIncoming, grad_losses.detach()).unit_grad;
  });
  return grad;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> supcon_loss_forward_cuda(const at::Tensor& embeddings,
                                                                                    const at::Tensor& labels,
                                                                                    double temperature, bool compute_grad) {
  return contrastive_forward("supcon_loss_forward", embeddings, labels, supcon_options(temperature), compute_grad);
}
at::Tensor supcon_loss_backward_cuda(const at::Tensor& grad_losses, const at::Tensor& embeddings, const at::Tensor& labels,
                                     const at::Tensor& losses, const at::Tensor& unit_grad, double temperature) {
  return contrastive_backward("_supcon_loss_backward", grad_losses, embeddings, labels, losses, unit_grad,
                              supcon_options(temperature));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> multi_similarity_loss_forward_cuda(
    const at::Tensor& embeddings, const at::Tensor& labels, double alpha, double beta, double base,
    std::optional<double> mining_epsilon, bool compute_grad) {
  return contrastive_forward("multi_similarity_loss_forward", embeddings, labels,
                             multi_similarity_options(alpha, beta, base, mining_epsilon), compute_grad);
}
at::Tensor multi_similarity_loss_backward_cuda(const at::Tensor& grad_losses, const at::Tensor& embeddings,
                                               const at::Tensor& labels, const at::Tensor& losses,
                                               const at::Tensor& unit_grad, double alpha, double beta, double base,
                                               std::optional<double> mining_epsilon) {
  return contrastive_backward("_multi_similarity_loss_backward", grad_losses, embeddings, labels, losses, unit_grad,
                              multi_similarity_options(alpha, beta, base, mining_epsilon));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> circle_loss_forward_cuda(const at::Tensor& embeddings,
                                                                                    const at::Tensor& labels, double m,
                                                                                    double gamma, bool compute_grad) {
  return contrastive_forward("circle_loss_forward", embeddings, labels, circle_options(m, gamma), compute_grad);
}
at::Tensor circle_loss_backward_cuda(const at::Tensor& grad_losses, const at::Tensor& embeddings, const at::Tensor& labels,
                                     const at::Tensor& losses, const at::Tensor& unit_grad, double m, double gamma) {
  return contrastive_backward("_circle_loss_backward", grad_losses, embeddings, labels, losses, unit_grad,
                              circle_options(m, gamma));
}

}  // namespace

TORCH_LIBRARY_IMPL(embedplug, CUDA, m) {
  m.impl("supcon_loss_forward", &supcon_loss_forward_cuda);
  m.impl("_supcon_loss_backward", &supcon_loss_backward_cuda);
  m.impl("multi_similarity_loss_forward", &multi_similarity_loss_forward_cuda);
  m.impl("_multi_similarity_loss_backward", &multi_similarity_loss_backward_cuda);
  m.impl("circle_loss_forward", &circle_loss_forward_cuda);
  m.impl("_circle_loss_backward", &circle_loss_backward_cuda);
}

}  // namespace cuda
}  // namespace embedplug
