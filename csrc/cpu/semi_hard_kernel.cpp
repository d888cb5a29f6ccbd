// Semi-hard triplet loss (sentence-transformers' BatchSemiHardTripletLoss) without N x N tensors.
//
// For every anchor-positive pair (a, p) ST picks the semi-hard negative: the smallest negative
// distance strictly greater than d_ap (the first column on ties, as its stable sort gives); when
// there is none, the row's "masked maximum" max_j ((d_aj - m_a) * is_negative_j) + m_a with m_a
// the row minimum, whose gradient reaches the arg-max column when that is a negative, and the
// arg-min column otherwise (no negatives, or every negative at the row minimum behind an earlier
// same-label column). The pair's loss is max((d_ap - neg) + margin, 0), with half the gradient at
// exactly 0 (torch.maximum's tie rule); the total is divided by the number of positive pairs.
//
// Per anchor, with its row from a blocked GEMM:
//   small classes (|P| <= kSmallClassPositives): one pass over the row keeps, for each of the |P|
//     positive distances, the nearest negative above it, O(N * K), no sort;
//   larger classes: sort the negatives once by (distance, column) and binary-search each positive,
//     O(N log N).
// Output: per-anchor sums [N]. Each positive pair puts weight on two columns of its anchor's row;
// the weights are applied tile by tile by pair_weight_gradient. As for batch-all, the forward can
// apply them for a uniform incoming gradient (which the loss always gives) and return that
// gradient; the backward rescales it, or recomputes the choices for any other incoming gradient.
#include <torch/library.h>

#include <algorithm>

#include "cpu/pairwise_tiles.h"
#include "op_input_checks.h"

namespace embedplug {
namespace cpu {
namespace {

constexpr int64_t kSmallClassPositives = 16;

struct DistanceColumn {
  double distance;
  int64_t column;
  bool operator<(const DistanceColumn& other) const {
    return distance < other.distance || (distance == other.distance && column < other.column);
  }
};

// Per-thread scratch and the per-anchor computation shared by the forward and the backward.
template <typename scalar_t>
struct SemiHardAnchor {
  const int64_t* labels;
  const ClassMembers* classes;
  int64_t n;
  scalar_t margin;
  std::vector<int64_t> positives, chosen_column;
  std::vector<scalar_t> positive_distance, chosen_distance;
  std::vector<DistanceColumn> sorted_negatives;

  // Loss sum of anchor a; with `weights`, also adds W[a, :] for an incoming gradient `grad`.
  double process(const scalar_t* row, int64_t a, scalar_t grad, scalar_t* weights) {
    // ST multiplies its whole loss matrix by a mask, so any non-finite distance, even in a row
    // without positives, makes the loss NaN.
    if (has_non_finite(row, n)) {
      if (weights) std::fill(weights, weights + n, std::numeric_limits<scalar_t>::quiet_NaN());
      return std::numeric_limits<double>::quiet_NaN();
    }
    classes->positives_of(a, positives);
    if (positives.empty()) return 0.0;
    const int64_t label = labels[a];
    const int64_t num_positives = static_cast<int64_t>(positives.size());
    const bool small_class = num_positives <= kSmallClassPositives;

    ArgExtreme<scalar_t> row_min = empty_argmin<scalar_t>();
    for (int64_t j = 0; j < n; ++j) keep_min(row_min, row[j], j);

    positive_distance.resize(num_positives);
    chosen_distance.assign(num_positives, std::numeric_limits<scalar_t>::infinity());
    chosen_column.assign(num_positives, -1);
    for (int64_t k = 0; k < num_positives; ++k) positive_distance[k] = row[positives[k]];
    // Masked maximum over the negatives of (d - row_min), first index on ties.
    ArgExtreme<scalar_t> negative_max = empty_argmax<scalar_t>();
    sorted_negatives.clear();
    for (int64_t j = 0; j < n; ++j) {
      if (!is_negative_pair(label, labels[j])) continue;
      const scalar_t negative = row[j];
      keep_max(negative_max, negative - row_min.value, j);
      if (!small_class) {
        sorted_negatives.push_back({static_cast<double>(negative), j});
        continue;
      }
      // Columns come in increasing order, so a strict < keeps the first of equal distances.
      for (int64_t k = 0; k < num_positives; ++k) {
        if (is_semi_hard_candidate(negative, positive_distance[k]) && negative < chosen_distance[k]) {
          chosen_distance[k] = negative;
          chosen_column[k] = j;
        }
      }
    }
    if (!small_class) {
      std::sort(sorted_negatives.begin(), sorted_negatives.end());
      for (int64_t k = 0; k < num_positives; ++k) {
        const auto above = std::upper_bound(
            sorted_negatives.begin(), sorted_negatives.end(), static_cast<double>(positive_distance[k]),
            [](double value, const DistanceColumn& entry) { return is_semi_hard_candidate(entry.distance, value); });
        if (above != sorted_negatives.end()) {
          chosen_distance[k] = row[above->column];
          chosen_column[k] = above->column;
        }
      }
    }
    // ST's fallback value and the column its gradient reaches.
    const SemiHardFallback<scalar_t> fallback = semi_hard_fallback(row_min, negative_max, classes->first_member(a));

    double sum = 0;
    for (int64_t k = 0; k < num_positives; ++k) {
      const bool found = chosen_column[k] >= 0;
      const scalar_t negative = found ? chosen_distance[k] : fallback.distance;
      const scalar_t t = triplet_value(positive_distance[k], negative, margin);
      sum += triplet_hinge(t);
      if (weights) {
        const scalar_t weight = grad * hinge_slope(t);
        weights[positives[k]] += weight;
        weights[found ? chosen_column[k] : fallback.column] -= weight;
      }
    }
    return sum;
  }
};

std::tuple<at::Tensor, at::Tensor> semi_hard_triplet_loss_forward_cpu(const at::Tensor& embeddings,
                                                                      const at::Tensor& labels,
                                                                      c10::string_view distance, double margin,
                                                                      bool compute_grad) {
  check_finite_option("semi_hard_triplet_loss_forward", "margin", margin);
  check_floating_inputs("semi_hard_triplet_loss_forward", {{"embeddings", &embeddings}});
  check_int64_input("semi_hard_triplet_loss_forward", "labels", labels);
  check_cpu_embeddings_and_labels(embeddings, labels);
  const DistanceKind kind = parse_distance(std::string_view(distance.data(), distance.size()));
  const int64_t n = embeddings.size(0);
  auto loss_sums = at::empty({n}, embeddings.options());
  at::Tensor unit_grad = at::empty({0}, embeddings.options());
  const auto labels_contiguous = labels.contiguous();
  const int64_t* label_ptr = labels_contiguous.data_ptr<int64_t>();
  const ClassMembers classes(label_ptr, n);
  AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "semi_hard_triplet_loss_forward_cpu", [&] {
    scalar_t* sum_ptr = loss_sums.data_ptr<scalar_t>();
    const SemiHardAnchor<scalar_t> prototype{label_ptr, &classes, n, static_cast<scalar_t>(margin)};
    // Detached: worker threads do not inherit autograd guards, and the op has its own backward.
    const auto x = embeddings.detach();
    if (compute_grad) {
      unit_grad = pair_weight_gradient<scalar_t>(
          x, kind, row_block_size(n), [&](int64_t row_begin, int64_t row_end, const scalar_t* distances, scalar_t* weights) {
            SemiHardAnchor<scalar_t> anchor = prototype;
            std::fill(weights, weights + (row_end - row_begin) * n, scalar_t(0));
            for (int64_t a = row_begin; a < row_end; ++a) {
              const int64_t offset = (a - row_begin) * n;
              sum_ptr[a] = static_cast<scalar_t>(anchor.process(distances + offset, a, scalar_t(1), weights + offset));
            }
          });
      return;
    }
    const GemmOperand operand = prepare_row_block_operand(x, kind, row_block_size(n));
    for_each_distance_row_block<scalar_t>(
        operand, kind, row_block_size(n), [&](int64_t row_begin, int64_t row_end, const scalar_t* distances, int) {
          SemiHardAnchor<scalar_t> anchor = prototype;
          for (int64_t a = row_begin; a < row_end; ++a) {
            sum_ptr[a] = static_cast<scalar_t>(anchor.process(distances + (a - row_begin) * n, a, scalar_t(0), nullptr));
          }
        });
  });
  return {loss_sums, unit_grad};
}

}  // namespace

// The shared backward behind the op's own input checks, so that errors name the op.
at::Tensor semi_hard_triplet_loss_backward_cpu(const at::Tensor& grad_sums, const at::Tensor& embeddings,
                                              const at::Tensor& labels, const at::Tensor& unit_grad,
                                              c10::string_view distance, double margin) {
  check_finite_option("_semi_hard_triplet_loss_backward", "margin", margin);
  check_floating_inputs("_semi_hard_triplet_loss_backward", {{"embeddings", &embeddings}});
  check_floating_inputs("_semi_hard_triplet_loss_backward", {{"grad_sums", &grad_sums}});
  check_int64_input("_semi_hard_triplet_loss_backward", "labels", labels);
  return per_anchor_loss_backward<SemiHardAnchor>(grad_sums, embeddings, labels, unit_grad, distance, margin);
}

TORCH_LIBRARY_IMPL(embedplug, CPU, m) {
  m.impl("semi_hard_triplet_loss_forward", &semi_hard_triplet_loss_forward_cpu);
  m.impl("_semi_hard_triplet_loss_backward", &semi_hard_triplet_loss_backward_cpu);
}

}  // namespace cpu
}  // namespace embedplug
