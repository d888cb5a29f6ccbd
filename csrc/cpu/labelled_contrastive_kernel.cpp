// Label-aware contrastive losses (SupCon, MultiSimilarity with or without MultiSimilarityMiner,
// Circle) as pytorch-metric-learning 2.9 computes them per anchor, without any N x N matrix.
//
// Anchors are processed in row blocks: one GEMM gives a block's cosine similarities against every
// column (for_each_distance_row_block, cosine distance d = 1 - s), and the rules of
// csrc/labelled_contrastive_rules.h turn each row into its loss in four sweeps (scan, group maxima,
// exp sums, weights). The exp of a whole block runs vectorised in one call. The gradient of
// sum_i w_i loss_i is applied block by block by pair_weight_gradient (weights -w_i d loss_i / d s_ij
// on d = 1 - s): with compute_grad the forward does it with w_i = 1 for the anchors the reducer
// counts (the reduction weights them all alike), and the backward rescales that unit gradient or,
// for any other incoming gradient, recomputes the rows. Memory: the block buffers and one N x D
// accumulator per thread.
#include <torch/library.h>

#include <optional>

#include "cpu/masked_infonce_common.h"
#include "cpu/pairwise_tiles.h"
#include "labelled_contrastive_common.h"
#include "labelled_contrastive_rules.h"
#include "op_input_checks.h"

namespace embedplug {
namespace cpu {
namespace {

using namespace labelled_contrastive;
using rules::ColumnGroup;
using rules::ContrastiveLoss;
using rules::ContrastiveParams;
using rules::GroupSums;
using rules::RowResult;
using rules::RowScan;

// Evaluates the rows [row_begin, row_end) of a distance block. `scratch` is a [rows x N] buffer;
// with `row_weight` non-null it ends holding the pair weights -row_weight(a, loss_a) * d loss_a / d s
// (pair_weight_gradient's convention on cosine distances), else it is scratch only.
template <typename scalar_t, typename RowWeight>
void evaluate_block(const ContrastiveParams<scalar_t>& p, const int64_t* labels, int64_t n, int64_t row_begin,
                    int64_t row_end, const scalar_t* distances, scalar_t* scratch, scalar_t* losses,
                    int64_t* positive_pairs, int64_t* negative_pairs, RowWeight* row_weight) {
  const int64_t rows = row_end - row_begin;
  std::vector<RowScan<scalar_t>> scans(rows);
  std::vector<GroupSums<scalar_t>> sums(rows);
  constexpr scalar_t dropped = -std::numeric_limits<scalar_t>::infinity();
  // Sweeps 1 and 2; the shifted logits (logit - group maximum, -inf outside any group) go to scratch.
  for (int64_t a = row_begin; a < row_end; ++a) {
    const scalar_t* d = distances + (a - row_begin) * n;
    scalar_t* shifted = scratch + (a - row_begin) * n;
    const int64_t label = labels[a];
    RowScan<scalar_t>& scan = scans[a - row_begin];
    for (int64_t j = 0; j < n; ++j) rules::scan_column(scan, scalar_t(1) - d[j], j == a, labels[j] == label);
    GroupSums<scalar_t>& group = sums[a - row_begin];
    group.maximum[0] = group.maximum[1] = rules::group_maximum_start(p);
    for (int64_t j = 0; j < n; ++j) {
      const scalar_t s = scalar_t(1) - d[j];
      const bool same_label = labels[j] == label;
      const int32_t g = rules::column_group(p, scan, s, j == a, same_label);
      if (g == rules::kNoGroup) {
        shifted[j] = dropped;
        continue;
      }
      const scalar_t logit = rules::column_logit(p, scan, s, g);
      shifted[j] = logit;
      group.maximum[g] = rules::rule_max(group.maximum[g], logit);
      ++group.kept[g];
      if (same_label) group.positive_logit_sum += logit;
    }
    for (int64_t j = 0; j < n; ++j) {
      if (shifted[j] == dropped) continue;
      const int32_t g = rules::column_group(p, scan, scalar_t(1) - d[j], j == a, labels[j] == label);
      const scalar_t maximum = group.maximum[g];
      shifted[j] = maximum == dropped ? dropped : shifted[j] - maximum;
    }
  }
  // Sweep 3, vectorised over the block (exact zeros where the exp underflows or the column is out).
  auto block = at::from_blob(scratch, {rows, n}, at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value));
  infonce::exp_without_underflow<scalar_t>(block);
  for (int64_t a = row_begin; a < row_end; ++a) {
    const scalar_t* d = distances + (a - row_begin) * n;
    scalar_t* e = scratch + (a - row_begin) * n;
    const int64_t label = labels[a];
    const RowScan<scalar_t>& scan = scans[a - row_begin];
    GroupSums<scalar_t>& group = sums[a - row_begin];
    group.exp_sum[0] = rules::group_sum_start(p, group.maximum[0]);
    group.exp_sum[1] = rules::group_sum_start(p, group.maximum[1]);
    // Sweep 3 needs each column's group; a NaN similarity falls in some group and makes its sum NaN.
    for (int64_t j = 0; j < n; ++j) {
      const int32_t g = rules::column_group(p, scan, scalar_t(1) - d[j], j == a, labels[j] == label);
      if (g != rules::kNoGroup) group.exp_sum[g] += e[j];
    }
    const RowResult<scalar_t> result = rules::finish_row(p, scan, group);
    losses[a] = result.loss;
    positive_pairs[a] = result.positive_pairs;
    negative_pairs[a] = result.negative_pairs;
    if (row_weight == nullptr) continue;
    const scalar_t w = (*row_weight)(a, result.loss);
    if (w == scalar_t(0)) {
      std::fill(e, e + n, scalar_t(0));
      continue;
    }
    // Sweep 4: e holds exp(logit - maximum); weight = coefficient * e * slope (+ SupCon's offset).
    for (int64_t j = 0; j < n; ++j) {
      const scalar_t s = scalar_t(1) - d[j];
      const bool same_label = labels[j] == label;
      const int32_t g = rules::column_group(p, scan, s, j == a, same_label);
      if (g == rules::kNoGroup) {
        e[j] = scalar_t(0);
        continue;
      }
      const scalar_t weight = result.coefficient[g] * e[j] * rules::logit_slope(p, s, g);
      e[j] = -w * (same_label ? weight + result.positive_offset : weight);
    }
  }
}

struct ContrastiveOutputs {
  at::Tensor losses, positive_pairs, negative_pairs, unit_grad;
};

// The losses, pair counts and (with row_weight) the gradient of sum_a row_weight(a, loss_a) loss_a.
template <typename scalar_t, typename RowWeight>
ContrastiveOutputs run_contrastive(const at::Tensor& embeddings, const int64_t* labels, const ContrastiveOptions& options,
                                   RowWeight* row_weight) {
  const auto x = embeddings.detach().contiguous();
  const int64_t n = x.size(0);
  ContrastiveOutputs out;
  out.losses = at::empty({n}, x.options());
  out.positive_pairs = at::empty({n}, x.options().dtype(at::kLong));
  out.negative_pairs = at::empty({n}, x.options().dtype(at::kLong));
  out.unit_grad = at::empty({0}, x.options());
  const ContrastiveParams<scalar_t> p = options.params<scalar_t>();
  scalar_t* losses = out.losses.data_ptr<scalar_t>();
  int64_t* positive_pairs = out.positive_pairs.data_ptr<int64_t>();
  int64_t* negative_pairs = out.negative_pairs.data_ptr<int64_t>();
  const int64_t block = row_block_size(n);
  if (row_weight != nullptr) {
    out.unit_grad = pair_weight_gradient<scalar_t>(
        x, DistanceKind::kCosine, block, [&](int64_t row_begin, int64_t row_end, const scalar_t* distances, scalar_t* weights) {
          evaluate_block(p, labels, n, row_begin, row_end, distances, weights, losses, positive_pairs, negative_pairs,
                         row_weight);
        });
    return out;
  }
  const GemmOperand operand = prepare_row_block_operand(x, DistanceKind::kCosine, block);
  std::vector<std::vector<scalar_t>> scratch(at::get_num_threads());
  for_each_distance_row_block<scalar_t>(
      operand, DistanceKind::kCosine, block, [&](int64_t row_begin, int64_t row_end, const scalar_t* distances, int thread_id) {
        auto& buffer = scratch[thread_id];
        buffer.resize(static_cast<size_t>((row_end - row_begin) * n));
        evaluate_block<scalar_t, RowWeight>(p, labels, n, row_begin, row_end, distances, buffer.data(), losses,
                                            positive_pairs, negative_pairs, nullptr);
      });
  return out;
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
    auto counted = [&](int64_t, scalar_t loss) { return rules::counted_by_reducer(p, loss) ? scalar_t(1) : scalar_t(0); };
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
  if (auto scaled = scaled_unit_gradient(grad_losses, losses, unit_grad, options)) return *scaled;
  const auto labels_contiguous = labels.contiguous();
  const int64_t* label_ptr = labels_contiguous.data_ptr<int64_t>();
  at::Tensor grad;
  AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "labelled_contrastive_backward_cpu", [&] {
    const auto weights = grad_losses.detach().to(embeddings.scalar_type()).contiguous();
    const scalar_t* weight_ptr = weights.data_ptr<scalar_t>();
    auto incoming = [&](int64_t a, scalar_t) { return weight_ptr[a]; };
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
