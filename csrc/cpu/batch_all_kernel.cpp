// Batch-all triplet loss (sentence-transformers' BatchAllTripletLoss) without the cubic tensor.
//
// For an anchor a with positives P and negatives Q, ST evaluates t(p, n) = (d_ap - d_an) + margin
// for every (p, n) and sums the ones that are not negative; it divides by the number of triplets
// with t > 1e-16. t is non-increasing in d_an and non-decreasing in d_ap, also after float
// rounding, so for each positive the triplets that count form a prefix of Q sorted by distance
// (and for each negative a suffix of P sorted by distance). Per anchor this gives
//   small classes (|P| <= kSmallClassPositives): compare every negative with the |P| positive
//     distances directly, O(N * K), no sort;
//   larger classes: sort Q once, prefix sums, one binary search per positive (the predicate is
//     evaluated with ST's own float expression, so counts are exact), O(N log N).
// Anchors are processed in blocks whose distance rows come from one GEMM into a per-thread
// buffer; nothing N x N (or P x N) is allocated.
//
// Outputs per anchor: the loss sum over its triplets and the count of triplets with t > 1e-16;
// the loss is sum(sums) / (sum(counts) + 1e-16). The backward recomputes the rows and turns the
// counts into per-pair weights, W[a, p] = g_a * #{n: t(p, n) >= 0} and
// W[a, n] = -g_a * #{p: t(p, n) >= 0}, applied tile by tile by pair_weight_gradient.
#include <torch/library.h>

#include <algorithm>

#include "cpu/pairwise_tiles.h"

namespace embedplug {
namespace cpu {
namespace {

constexpr int64_t kRowBlock = 64;
// Above this many positives a sort plus binary searches beats comparing each negative with every
// positive (log2 of a few thousand negatives is ~12; the direct loop has no branches to mispredict).
constexpr int64_t kSmallClassPositives = 16;
// ST counts a triplet as "positive" when its loss exceeds this.
constexpr double kPositiveTripletThreshold = 1e-16;

// One anchor's row split into its positive and negative distances (same order as the columns).
template <typename scalar_t>
struct AnchorRow {
  std::vector<scalar_t> positive_distance, negative_distance;
  std::vector<int64_t> positive_column, negative_column;
  bool non_finite = false;

  void split(const scalar_t* row, const int64_t* labels, int64_t n, int64_t anchor) {
    positive_distance.clear();
    negative_distance.clear();
    positive_column.clear();
    negative_column.clear();
    non_finite = false;
    const int64_t label = labels[anchor];
    for (int64_t j = 0; j < n; ++j) {
      non_finite |= !std::isfinite(row[j]);
      if (labels[j] != label) {
        negative_distance.push_back(row[j]);
        negative_column.push_back(j);
      } else if (j != anchor) {
        positive_distance.push_back(row[j]);
        positive_column.push_back(j);
      }
    }
  }
};

template <typename scalar_t>
inline scalar_t triplet_value(scalar_t positive, scalar_t negative, scalar_t margin) {
  return (positive - negative) + margin;  // ST's evaluation order
}

// Forward for one anchor: (sum of the non-negative triplet losses, number above 1e-16).
template <typename scalar_t>
std::pair<double, int64_t> anchor_loss(const AnchorRow<scalar_t>& row, scalar_t margin,
                                       std::vector<scalar_t>& sorted, std::vector<double>& prefix) {
  const scalar_t threshold = static_cast<scalar_t>(kPositiveTripletThreshold);
  double sum = 0;
  int64_t count = 0;
  const auto& positives = row.positive_distance;
  const auto& negatives = row.negative_distance;
  if (static_cast<int64_t>(positives.size()) <= kSmallClassPositives) {
    for (const scalar_t negative : negatives) {
      for (const scalar_t positive : positives) {
        const scalar_t t = triplet_value(positive, negative, margin);
        if (t >= scalar_t(0)) sum += t;
        count += t > threshold;
      }
    }
    return {sum, count};
  }
  sorted.assign(negatives.begin(), negatives.end());
  std::sort(sorted.begin(), sorted.end());
  prefix.resize(sorted.size() + 1);
  prefix[0] = 0;
  for (size_t i = 0; i < sorted.size(); ++i) prefix[i + 1] = prefix[i] + sorted[i];
  for (const scalar_t positive : positives) {
    const auto kept = std::partition_point(sorted.begin(), sorted.end(), [&](scalar_t negative) {
                        return triplet_value(positive, negative, margin) >= scalar_t(0);
                      }) - sorted.begin();
    const auto counted = std::partition_point(sorted.begin(), sorted.end(), [&](scalar_t negative) {
                           return triplet_value(positive, negative, margin) > threshold;
                         }) - sorted.begin();
    sum += static_cast<double>(kept) * (static_cast<double>(positive) + static_cast<double>(margin)) - prefix[kept];
    count += counted;
  }
  return {sum, count};
}

// Backward weights for one anchor row: W[a, p] = g * #{n: t >= 0}, W[a, n] = -g * #{p: t >= 0}.
template <typename scalar_t>
void anchor_weights(const AnchorRow<scalar_t>& row, scalar_t margin, scalar_t grad, scalar_t* weights,
                    std::vector<scalar_t>& sorted_negatives, std::vector<scalar_t>& sorted_positives) {
  const auto& positives = row.positive_distance;
  const auto& negatives = row.negative_distance;
  if (static_cast<int64_t>(positives.size()) <= kSmallClassPositives) {
    for (size_t q = 0; q < negatives.size(); ++q) {
      int64_t kept_positives = 0;
      for (size_t p = 0; p < positives.size(); ++p) {
        const bool kept = triplet_value(positives[p], negatives[q], margin) >= scalar_t(0);
        kept_positives += kept;
        weights[row.positive_column[p]] += kept ? grad : scalar_t(0);
      }
      weights[row.negative_column[q]] = -grad * static_cast<scalar_t>(kept_positives);
    }
    return;
  }
  sorted_negatives.assign(negatives.begin(), negatives.end());
  std::sort(sorted_negatives.begin(), sorted_negatives.end());
  sorted_positives.assign(positives.begin(), positives.end());
  std::sort(sorted_positives.begin(), sorted_positives.end());
  for (size_t p = 0; p < positives.size(); ++p) {
    const scalar_t positive = positives[p];
    const auto kept = std::partition_point(sorted_negatives.begin(), sorted_negatives.end(), [&](scalar_t negative) {
                        return triplet_value(positive, negative, margin) >= scalar_t(0);
                      }) - sorted_negatives.begin();
    weights[row.positive_column[p]] = grad * static_cast<scalar_t>(kept);
  }
  for (size_t q = 0; q < negatives.size(); ++q) {
    const scalar_t negative = negatives[q];
    // Positives too close to keep the triplet form a prefix of the ascending positives.
    const auto dropped = std::partition_point(sorted_positives.begin(), sorted_positives.end(), [&](scalar_t positive) {
                           return triplet_value(positive, negative, margin) < scalar_t(0);
                         }) - sorted_positives.begin();
    weights[row.negative_column[q]] =
        -grad * static_cast<scalar_t>(static_cast<int64_t>(sorted_positives.size()) - dropped);
  }
}

std::tuple<at::Tensor, at::Tensor> batch_all_triplet_loss_forward_cpu(const at::Tensor& embeddings,
                                                                      const at::Tensor& labels,
                                                                      c10::string_view distance, double margin) {
  check_embeddings_and_labels(embeddings, labels);
  const DistanceKind kind = parse_distance(std::string_view(distance.data(), distance.size()));
  const int64_t n = embeddings.size(0);
  auto loss_sums = at::empty({n}, embeddings.options());
  auto counts = at::empty({n}, labels.options());
  const auto labels_contiguous = labels.contiguous();
  const int64_t* label_ptr = labels_contiguous.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "batch_all_triplet_loss_forward_cpu", [&] {
    // Detached: worker threads do not inherit autograd guards, and the op has its own backward.
    const GemmOperand operand = prepare_row_block_operand(embeddings.detach(), kind, kRowBlock);
    scalar_t* sum_ptr = loss_sums.data_ptr<scalar_t>();
    int64_t* count_ptr = counts.data_ptr<int64_t>();
    const scalar_t typed_margin = static_cast<scalar_t>(margin);
    for_each_distance_row_block<scalar_t>(
        operand, kind, kRowBlock, [&](int64_t row_begin, int64_t row_end, const scalar_t* distances, int) {
          AnchorRow<scalar_t> row;
          std::vector<scalar_t> sorted;
          std::vector<double> prefix;
          for (int64_t a = row_begin; a < row_end; ++a) {
            row.split(distances + (a - row_begin) * n, label_ptr, n, a);
            // ST only looks at anchors with a positive; for those, 0 * inf or NaN poisons the sum.
            if (row.positive_distance.empty()) {
              sum_ptr[a] = scalar_t(0);
              count_ptr[a] = 0;
              continue;
            }
            if (row.non_finite) {
              sum_ptr[a] = std::numeric_limits<scalar_t>::quiet_NaN();
              count_ptr[a] = 0;
              continue;
            }
            const auto [sum, count] = anchor_loss(row, typed_margin, sorted, prefix);
            sum_ptr[a] = static_cast<scalar_t>(sum);
            count_ptr[a] = count;
          }
        });
  });
  return {loss_sums, counts};
}

at::Tensor batch_all_triplet_loss_backward_cpu(const at::Tensor& grad_sums, const at::Tensor& embeddings,
                                               const at::Tensor& labels, c10::string_view distance, double margin) {
  check_embeddings_and_labels(embeddings, labels);
  TORCH_CHECK(grad_sums.dim() == 1 && grad_sums.size(0) == embeddings.size(0),
              "embedplug: grad_sums must be [N]");
  const DistanceKind kind = parse_distance(std::string_view(distance.data(), distance.size()));
  const int64_t n = embeddings.size(0);
  const auto labels_contiguous = labels.contiguous();
  const int64_t* label_ptr = labels_contiguous.data_ptr<int64_t>();
  at::Tensor grad;
  AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "batch_all_triplet_loss_backward_cpu", [&] {
    const auto grad_per_anchor = grad_sums.detach().to(embeddings.scalar_type()).contiguous();
    const scalar_t* grad_ptr = grad_per_anchor.data_ptr<scalar_t>();
    const scalar_t typed_margin = static_cast<scalar_t>(margin);
    grad = pair_weight_gradient<scalar_t>(
        embeddings, kind, kRowBlock,
        [&](int64_t row_begin, int64_t row_end, const scalar_t* distances, scalar_t* weights) {
          AnchorRow<scalar_t> row;
          std::vector<scalar_t> sorted_negatives, sorted_positives;
          std::fill(weights, weights + (row_end - row_begin) * n, scalar_t(0));
          for (int64_t a = row_begin; a < row_end; ++a) {
            scalar_t* weight_row = weights + (a - row_begin) * n;
            row.split(distances + (a - row_begin) * n, label_ptr, n, a);
            const scalar_t g = grad_ptr[a];
            if (row.positive_distance.empty() || g == scalar_t(0)) continue;
            if (row.non_finite) {
              std::fill(weight_row, weight_row + n, std::numeric_limits<scalar_t>::quiet_NaN());
              continue;
            }
            anchor_weights(row, typed_margin, g, weight_row, sorted_negatives, sorted_positives);
          }
        });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(embedplug, CPU, m) {
  m.impl("batch_all_triplet_loss_forward", &batch_all_triplet_loss_forward_cpu);
  m.impl("_batch_all_triplet_loss_backward", &batch_all_triplet_loss_backward_cpu);
}

}  // namespace cpu
}  // namespace embedplug
