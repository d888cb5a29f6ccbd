// Semi-hard triplet loss (sentence-transformers' BatchSemiHardTripletLoss) without N x N tensors.
//
// For every anchor-positive pair (a, p) ST picks the semi-hard negative: the smallest negative
// distance strictly greater than d_ap (the first column on ties, as its stable sort gives); when
// there is none, the row's "masked maximum" max_n (d_an - m_a) + m_a with m_a the row minimum,
// whose gradient reaches the arg-max negative -- or, when the arg-max column is not a negative
// (no negatives, or every negative at the row minimum behind an earlier same-label column), the
// arg-min column. The pair's loss is max((d_ap - neg) + margin, 0), half-gradient at exactly 0
// (torch.maximum's tie rule), summed and divided by the number of positive pairs.
//
// Per anchor, with its row from a blocked GEMM:
//   small classes (|P| <= kSmallClassPositives): one pass over the negatives per positive, O(N * K);
//   larger classes: sort the negatives once by (distance, column) and binary-search each positive,
//     O(N log N).
// Output: per-anchor sums [N]; every positive pair touches two columns of its anchor's row, and the
// backward recomputes the choice and applies the weights tile by tile (pair_weight_gradient).
#include <torch/library.h>

#include <algorithm>

#include "cpu/pairwise_tiles.h"

namespace embedplug {
namespace cpu {
namespace {

constexpr int64_t kRowBlock = 64;
constexpr int64_t kSmallClassPositives = 16;

struct DistanceColumn {
  double distance;
  int64_t column;
  bool operator<(const DistanceColumn& other) const {
    return distance < other.distance || (distance == other.distance && column < other.column);
  }
};

// Everything one anchor's semi-hard choices depend on.
template <typename scalar_t>
struct SemiHardRow {
  std::vector<int64_t> positives, negatives;
  std::vector<DistanceColumn> sorted_negatives;  // only for large classes
  scalar_t fallback_value = 0;                   // ST's masked maximum of the row
  int64_t fallback_column = -1;                  // the column its gradient reaches
  bool non_finite = false;

  void build(const scalar_t* row, const int64_t* labels, int64_t n, int64_t anchor) {
    positives.clear();
    negatives.clear();
    non_finite = false;
    const int64_t label = labels[anchor];
    ArgExtreme<scalar_t> row_min = empty_argmin<scalar_t>();
    for (int64_t j = 0; j < n; ++j) {
      non_finite |= !std::isfinite(row[j]);
      keep_min(row_min, row[j], j);
      if (labels[j] != label) {
        negatives.push_back(j);
      } else if (j != anchor) {
        positives.push_back(j);
      }
    }
    if (non_finite || positives.empty()) return;
    // ST: max_j ((d_j - min) * is_negative_j) + min, first index on ties; a non-negative column
    // contributes exactly 0 there.
    ArgExtreme<scalar_t> masked_max = empty_argmax<scalar_t>();
    for (int64_t j = 0; j < n; ++j) {
      keep_max(masked_max, labels[j] != label ? row[j] - row_min.value : scalar_t(0), j);
    }
    fallback_value = masked_max.value + row_min.value;
    fallback_column = labels[masked_max.index] != label ? masked_max.index : row_min.index;
    if (static_cast<int64_t>(positives.size()) > kSmallClassPositives) {
      sorted_negatives.clear();
      for (const int64_t q : negatives) sorted_negatives.push_back({static_cast<double>(row[q]), q});
      std::sort(sorted_negatives.begin(), sorted_negatives.end());
    }
  }

  // The semi-hard negative of positive distance `positive`: (value, column for its gradient).
  std::pair<scalar_t, int64_t> negative_for(const scalar_t* row, scalar_t positive) const {
    if (static_cast<int64_t>(positives.size()) > kSmallClassPositives) {
      const auto above = std::upper_bound(
          sorted_negatives.begin(), sorted_negatives.end(), static_cast<double>(positive),
          [](double value, const DistanceColumn& entry) { return value < entry.distance; });
      if (above != sorted_negatives.end()) return {row[above->column], above->column};
      return {fallback_value, fallback_column};
    }
    ArgExtreme<scalar_t> nearest_above = empty_argmin<scalar_t>();
    for (const int64_t q : negatives) {
      if (row[q] > positive) keep_min(nearest_above, row[q], q);
    }
    if (is_set(nearest_above)) return {nearest_above.value, nearest_above.index};
    return {fallback_value, fallback_column};
  }
};

at::Tensor semi_hard_triplet_loss_forward_cpu(const at::Tensor& embeddings, const at::Tensor& labels,
                                              c10::string_view distance, double margin) {
  check_embeddings_and_labels(embeddings, labels);
  const DistanceKind kind = parse_distance(std::string_view(distance.data(), distance.size()));
  const int64_t n = embeddings.size(0);
  auto loss_sums = at::empty({n}, embeddings.options());
  const auto labels_contiguous = labels.contiguous();
  const int64_t* label_ptr = labels_contiguous.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "semi_hard_triplet_loss_forward_cpu", [&] {
    // Detached: worker threads do not inherit autograd guards, and the op has its own backward.
    const GemmOperand operand = prepare_row_block_operand(embeddings.detach(), kind, kRowBlock);
    scalar_t* sum_ptr = loss_sums.data_ptr<scalar_t>();
    const scalar_t typed_margin = static_cast<scalar_t>(margin);
    for_each_distance_row_block<scalar_t>(
        operand, kind, kRowBlock, [&](int64_t row_begin, int64_t row_end, const scalar_t* distances, int) {
          SemiHardRow<scalar_t> state;
          for (int64_t a = row_begin; a < row_end; ++a) {
            const scalar_t* row = distances + (a - row_begin) * n;
            state.build(row, label_ptr, n, a);
            // ST multiplies every entry of the loss matrix by a mask, so any non-finite
            // distance makes the loss NaN.
            if (state.non_finite) {
              sum_ptr[a] = std::numeric_limits<scalar_t>::quiet_NaN();
              continue;
            }
            double sum = 0;
            for (const int64_t p : state.positives) {
              const scalar_t t = (row[p] - state.negative_for(row, row[p]).first) + typed_margin;
              if (t > scalar_t(0)) sum += t;
            }
            sum_ptr[a] = static_cast<scalar_t>(sum);
          }
        });
  });
  return loss_sums;
}

at::Tensor semi_hard_triplet_loss_backward_cpu(const at::Tensor& grad_sums, const at::Tensor& embeddings,
                                               const at::Tensor& labels, c10::string_view distance, double margin) {
  check_embeddings_and_labels(embeddings, labels);
  TORCH_CHECK(grad_sums.dim() == 1 && grad_sums.size(0) == embeddings.size(0),
              "embedplug: grad_sums must be [N]");
  const DistanceKind kind = parse_distance(std::string_view(distance.data(), distance.size()));
  const int64_t n = embeddings.size(0);
  const auto labels_contiguous = labels.contiguous();
  const int64_t* label_ptr = labels_contiguous.data_ptr<int64_t>();
  at::Tensor grad;
  AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "semi_hard_triplet_loss_backward_cpu", [&] {
    const auto grad_per_anchor = grad_sums.detach().to(embeddings.scalar_type()).contiguous();
    const scalar_t* grad_ptr = grad_per_anchor.data_ptr<scalar_t>();
    const scalar_t typed_margin = static_cast<scalar_t>(margin);
    grad = pair_weight_gradient<scalar_t>(
        embeddings, kind, kRowBlock,
        [&](int64_t row_begin, int64_t row_end, const scalar_t* distances, scalar_t* weights) {
          SemiHardRow<scalar_t> state;
          std::fill(weights, weights + (row_end - row_begin) * n, scalar_t(0));
          for (int64_t a = row_begin; a < row_end; ++a) {
            const scalar_t* row = distances + (a - row_begin) * n;
            scalar_t* weight_row = weights + (a - row_begin) * n;
            const scalar_t g = grad_ptr[a];
            if (g == scalar_t(0)) continue;
            state.build(row, label_ptr, n, a);
            if (state.non_finite) {
              std::fill(weight_row, weight_row + n, std::numeric_limits<scalar_t>::quiet_NaN());
              continue;
            }
            for (const int64_t p : state.positives) {
              const auto [negative, negative_column] = state.negative_for(row, row[p]);
              const scalar_t t = (row[p] - negative) + typed_margin;
              // d max(t, 0) / dt, with torch.maximum's half-half split at the tie t == 0.
              const scalar_t slope = t > scalar_t(0) ? scalar_t(1) : (t == scalar_t(0) ? scalar_t(0.5) : scalar_t(0));
              weight_row[p] += g * slope;
              weight_row[negative_column] -= g * slope;
            }
          }
        });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(embedplug, CPU, m) {
  m.impl("semi_hard_triplet_loss_forward", &semi_hard_triplet_loss_forward_cpu);
  m.impl("_semi_hard_triplet_loss_backward", &semi_hard_triplet_loss_backward_cpu);
}

}  // namespace cpu
}  // namespace embedplug
