// Label-aware contrastive losses (SupCon, MultiSimilarity with or without MultiSimilarityMiner,
// Circle) as pytorch-metric-learning 2.9 computes them per anchor, without any N x N matrix.
//
// The passes over upper-triangular Gram tiles are in labelled_contrastive_tiles.h: each unordered
// pair of unit rows is computed once per pass and serves both of its rows, the per-group
// log-sum-exps are merged online, and the gradient of sum_a w_a loss_a is applied as M = W + W^T
// with two tile GEMMs. With compute_grad the forward runs the gradient pass with w_a = 1 for the
// anchors the reducer counts (the reduction weights them all alike), and the backward rescales
// that unit gradient or, for any other incoming gradient, recomputes the passes with w = grad.
#include <torch/library.h>

#include <optional>

#include "cpu/labelled_contrastive_tiles.h"
#include "cpu/pairwise_tiles.h"
#include "labelled_contrastive_common.h"
#include "labelled_contrastive_rules.h"
#include "op_input_checks.h"

namespace embedplug {
namespace cpu {
namespace {

using namespace labelled_contrastive;
using namespace contrastive_tiles;
using rules::ContrastiveLoss;
using rules::ContrastiveParams;
using rules::GroupSums;
using rules::RowResult;

struct ContrastiveOutputs {
  at::Tensor losses, positive_pairs, negative_pairs, unit_grad;
};

template <typename States>
void merge_into_first(std::vector<States>& per_thread, int64_t n) {
  if (per_thread.size() < 2) return;
  at::parallel_for(0, n, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t a = begin; a < end; ++a) {
      for (size_t t = 1; t < per_thread.size(); ++t) per_thread[0].merge(per_thread[t], a);
    }
  });
}

template <typename scalar_t>
Tile<scalar_t> tile_of(const TilePair& pair, const scalar_t* gram) {
  return {gram, pair.row_begin, pair.row_end - pair.row_begin, pair.col_begin, pair.col_end - pair.col_begin,
          pair.on_diagonal()};
}

// Whether any row holds NaN or +-Inf: then every similarity row does (each row meets every other),
// which is what the rules' per-row non-finite test sees.
bool any_non_finite_row(const at::Tensor& unit) { return !unit.isfinite().all().item<bool>(); }

// The losses, pair counts and (with row_weight) the gradient of sum_a row_weight(a, row_a) loss_a.
template <ContrastiveLoss Loss, bool Mine, typename scalar_t, typename RowWeight>
ContrastiveOutputs run_tiles(const at::Tensor& embeddings, const int64_t* labels, const ContrastiveOptions& options,
                             RowWeight* row_weight) {
  const auto x = embeddings.detach().contiguous();
  const int64_t n = x.size(0), dim = x.size(1);
  const at::Tensor unit = prepare_operand(x, DistanceKind::kCosine).rows;
  const LabelClasses classes(labels, n);
  const int32_t* ids = classes.ids.data();
  const int64_t tile = contrastive_tile_size(n);
  const ContrastiveParams<scalar_t> p = options.params<scalar_t>();
  const PairRule<Loss, Mine, scalar_t> rule{p};
  const int num_threads = std::max(at::get_num_threads(), 1);
  std::vector<TileScratch<scalar_t>> scratch(num_threads);
  for (auto& own : scratch) own.reserve(tile);

  std::vector<Thresholds<scalar_t>> thresholds(Mine ? num_threads : 0, Thresholds<scalar_t>(n));
  if (Mine) {
    for_each_gram_tile<scalar_t>(unit, tile, [&](const TilePair& pair, const scalar_t* gram, int thread_id) {
      scan_tile(tile_of(pair, gram), ids, scratch[thread_id], thresholds[thread_id]);
    });
    merge_into_first(thresholds, n);
  }
  const Thresholds<scalar_t>* miner = Mine ? &thresholds[0] : nullptr;
  std::vector<GroupStates<scalar_t>> groups(num_threads, GroupStates<scalar_t>(n));
  for_each_gram_tile<scalar_t>(unit, tile, [&](const TilePair& pair, const scalar_t* gram, int thread_id) {
    group_sums_tile(rule, tile_of(pair, gram), ids, miner, scratch[thread_id], groups[thread_id]);
  });
  merge_into_first(groups, n);

  ContrastiveOutputs out;
  out.losses = at::empty({n}, x.options());
  out.positive_pairs = at::empty({n}, x.options().dtype(at::kLong));
  out.negative_pairs = at::empty({n}, x.options().dtype(at::kLong));
  out.unit_grad = at::empty({0}, x.options());
  scalar_t* losses = out.losses.data_ptr<scalar_t>();
  int64_t* positive_pairs = out.positive_pairs.data_ptr<int64_t>();
  int64_t* negative_pairs = out.negative_pairs.data_ptr<int64_t>();
  RowGradients<scalar_t> gradients(row_weight != nullptr ? n : 0);
  const GroupStates<scalar_t>& group = groups[0];
  const bool non_finite = any_non_finite_row(unit);
  for (int64_t a = 0; a < n; ++a) {
    const rules::FinishedRow<scalar_t> finished = rules::finish_anchor(
        p, classes.class_size[a], n, non_finite,
        RunningLogSumExp<scalar_t>::of(group.maximum[kPositiveGroup][a], group.exp_sum[kPositiveGroup][a]),
        RunningLogSumExp<scalar_t>::of(group.maximum[kNegativeGroup][a], group.exp_sum[kNegativeGroup][a]),
        group.kept[kPositiveGroup][a], group.kept[kNegativeGroup][a], group.positive_logit_sum[a]);
    const GroupSums<scalar_t>& sums = finished.sums;
    const RowResult<scalar_t>& result = finished.result;
    losses[a] = result.loss;
    positive_pairs[a] = result.positive_pairs;
    negative_pairs[a] = result.negative_pairs;
    if (row_weight == nullptr) continue;
    const rules::RowGradient<scalar_t> row = rules::row_gradient(sums, result, (*row_weight)(a, result));
    for (int g = 0; g < 2; ++g) {
      gradients.maximum[g * n + a] = row.maximum[g];
      gradients.coefficient[g * n + a] = row.coefficient[g];
    }
    gradients.positive_offset[a] = row.positive_offset;
  }
  if (row_weight == nullptr) return out;

  // grad pass: M = W + W^T per tile, applied to the tile's two sets of rows by two GEMMs.
  std::vector<at::Tensor> accumulators(num_threads);
  for_each_gram_tile<scalar_t>(unit, tile, [&](const TilePair& pair, const scalar_t* gram, int thread_id) {
    TileScratch<scalar_t>& own = scratch[thread_id];
    at::Tensor& accumulator = accumulators[thread_id];
    if (!accumulator.defined()) accumulator = at::zeros({n, dim}, x.options());
    const Tile<scalar_t> t = tile_of(pair, gram);
    symmetric_pair_weights_tile(rule, t, ids, miner, gradients, own);
    const auto pair_weights = at::from_blob(own.row_values.data(), {t.rows, t.cols}, x.options());
    accumulator.narrow(0, t.row_begin, t.rows).addmm_(pair_weights, unit.narrow(0, t.col_begin, t.cols));
    if (!t.diagonal) {
      accumulator.narrow(0, t.col_begin, t.cols).addmm_(pair_weights.t(), unit.narrow(0, t.row_begin, t.rows));
    }
  });
  // Summed into the first thread's accumulator: no further N x D buffer.
  at::Tensor pair_total;
  for (const auto& accumulator : accumulators) {
    if (!accumulator.defined()) continue;
    if (pair_total.defined()) {
      pair_total.add_(accumulator);
    } else {
      pair_total = accumulator;
    }
  }
  // d/du_a = G_a = sum_j M_aj u_j; through normalize: (G_a - (u_a . G_a) u_a) / max(|x_a|, eps),
  // which is finish_pair_gradient's cosine step with distance weights -M.
  const auto self_total = unit.mul(pair_total).sum(1);
  out.unit_grad = finish_pair_gradient(x, unit, DistanceKind::kCosine, self_total.neg(), pair_total.neg());
  return out;
}

template <typename scalar_t, typename RowWeight>
ContrastiveOutputs run_contrastive(const at::Tensor& embeddings, const int64_t* labels, const ContrastiveOptions& options,
                                   RowWeight* row_weight) {
  switch (options.loss) {
    case ContrastiveLoss::kSupCon:
      return run_tiles<ContrastiveLoss::kSupCon, false, scalar_t>(embeddings, labels, options, row_weight);
    case ContrastiveLoss::kMultiSimilarity:
      if (options.mining_epsilon) {
        return run_tiles<ContrastiveLoss::kMultiSimilarity, true, scalar_t>(embeddings, labels, options, row_weight);
      }
      return run_tiles<ContrastiveLoss::kMultiSimilarity, false, scalar_t>(embeddings, labels, options, row_weight);
    case ContrastiveLoss::kCircle:
    default:
      return run_tiles<ContrastiveLoss::kCircle, false, scalar_t>(embeddings, labels, options, row_weight);
  }
}

void check_inputs(const char* op, const at::Tensor& embeddings, const at::Tensor& labels) {
  check_floating_inputs(op, {{"embeddings", &embeddings}});
  check_int64_input(op, "labels", labels);
  check_cpu_embeddings_and_labels(embeddings, labels);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrastive_forward(const char* op,
                                                                               const at::Tensor& embeddings,
                                                                               const at::Tensor& labels,
                                                                               const ContrastiveOptions& options,
                                                                               bool compute_grad) {
  check_inputs(op, embeddings, labels);
  const auto labels_contiguous = labels.contiguous();
  const int64_t* label_ptr = labels_contiguous.data_ptr<int64_t>();
  ContrastiveOutputs out;
  AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "labelled_contrastive_forward_cpu", [&] {
    const ContrastiveParams<scalar_t> p = options.params<scalar_t>();
    // Unit weight on every anchor the reducer averages over: its gradient is 1 / count for each.
    auto counted = [&](int64_t, const rules::RowResult<scalar_t>& row) {
      return rules::counted_by_reducer(p, row.positive_pairs, row.negative_pairs, row.loss) ? scalar_t(1) : scalar_t(0);
    };
    out = run_contrastive<scalar_t>(embeddings, label_ptr, options, compute_grad ? &counted : nullptr);
  });
  return {out.losses, out.positive_pairs, out.negative_pairs, out.unit_grad};
}

at::Tensor contrastive_backward(const char* op, const at::Tensor& grad_losses, const at::Tensor& embeddings,
                                const at::Tensor& labels, const at::Tensor& losses, const at::Tensor& unit_grad,
                                const ContrastiveOptions& options) {
  check_inputs(op, embeddings, labels);
  check_floating_inputs(op, {{"grad_losses", &grad_losses}});
  const int64_t n = embeddings.size(0);
  TORCH_CHECK(grad_losses.dim() == 1 && grad_losses.size(0) == n && losses.dim() == 1 && losses.size(0) == n,
              "embedplug: grad_losses and losses must be [N]");
  if (auto scaled = scaled_unit_gradient(grad_losses, labels, losses, unit_grad, options)) return *scaled;
  const auto labels_contiguous = labels.contiguous();
  const int64_t* label_ptr = labels_contiguous.data_ptr<int64_t>();
  at::Tensor grad;
  AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "labelled_contrastive_backward_cpu", [&] {
    const auto weights = grad_losses.detach().to(embeddings.scalar_type()).contiguous();
    const scalar_t* weight_ptr = weights.data_ptr<scalar_t>();
    auto incoming = [&](int64_t a, const rules::RowResult<scalar_t>&) { return weight_ptr[a]; };
    grad = run_contrastive<scalar_t>(embeddings, label_ptr, options, &incoming).unit_grad;
  });
  return grad;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> supcon_loss_forward_cpu(const at::Tensor& embeddings,
                                                                                   const at::Tensor& labels,
                                                                                   double temperature, bool compute_grad) {
  return contrastive_forward("supcon_loss_forward", embeddings, labels, supcon_options(temperature), compute_grad);
}
at::Tensor supcon_loss_backward_cpu(const at::Tensor& grad_losses, const at::Tensor& embeddings, const at::Tensor& labels,
                                    const at::Tensor& losses, const at::Tensor& unit_grad, double temperature) {
  return contrastive_backward("_supcon_loss_backward", grad_losses, embeddings, labels, losses, unit_grad, supcon_options(temperature));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> multi_similarity_loss_forward_cpu(
    const at::Tensor& embeddings, const at::Tensor& labels, double alpha, double beta, double base,
    std::optional<double> mining_epsilon, bool compute_grad) {
  return contrastive_forward("multi_similarity_loss_forward", embeddings, labels, multi_similarity_options(alpha, beta, base, mining_epsilon), compute_grad);
}
at::Tensor multi_similarity_loss_backward_cpu(const at::Tensor& grad_losses, const at::Tensor& embeddings,
                                              const at::Tensor& labels, const at::Tensor& losses,
                                              const at::Tensor& unit_grad, double alpha, double beta, double base,
                                              std::optional<double> mining_epsilon) {
  return contrastive_backward("_multi_similarity_loss_backward", grad_losses, embeddings, labels, losses, unit_grad,
                              multi_similarity_options(alpha, beta, base, mining_epsilon));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> circle_loss_forward_cpu(const at::Tensor& embeddings,
                                                                                   const at::Tensor& labels, double m,
                                                                                   double gamma, bool compute_grad) {
  return contrastive_forward("circle_loss_forward", embeddings, labels, circle_options(m, gamma), compute_grad);
}
at::Tensor circle_loss_backward_cpu(const at::Tensor& grad_losses, const at::Tensor& embeddings, const at::Tensor& labels,
                                    const at::Tensor& losses, const at::Tensor& unit_grad, double m, double gamma) {
  return contrastive_backward("_circle_loss_backward", grad_losses, embeddings, labels, losses, unit_grad, circle_options(m, gamma));
}

}  // namespace

TORCH_LIBRARY_IMPL(embedplug, CPU, m) {
  m.impl("supcon_loss_forward", &supcon_loss_forward_cpu);
  m.impl("_supcon_loss_backward", &supcon_loss_backward_cpu);
  m.impl("multi_similarity_loss_forward", &multi_similarity_loss_forward_cpu);
  m.impl("_multi_similarity_loss_backward", &multi_similarity_loss_backward_cpu);
  m.impl("circle_loss_forward", &circle_loss_forward_cpu);
  m.impl("_circle_loss_backward", &circle_loss_backward_cpu);
}

}  // namespace cpu
}  // namespace embedplug
