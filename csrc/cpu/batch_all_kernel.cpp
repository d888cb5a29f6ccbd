// Batch-all triplet loss (sentence-transformers' BatchAllTripletLoss) without the cubic tensor.
//
// For an anchor a with positives P and negatives Q, ST evaluates t(p, n) = (d_ap - d_an) + margin
// for every (p, n), sums the ones that are not negative and divides by the number of triplets
// with t > 1e-16. t is non-increasing in d_an and non-decreasing in d_ap, also after float
// rounding, so for each positive the triplets that count form a prefix of Q sorted by distance
// (and for each negative a suffix of P sorted by distance). Per anchor this gives
//   small classes (|P| <= kSmallClassPositives): one pass over the row comparing each negative
//     with the |P| positive distances, O(N * K), no sort;
//   larger classes: sort Q once, prefix sums, one binary search per positive (and sort P, one
//     binary search per negative for the gradient), O(N log N). The predicates are evaluated with
//     ST's own float expression, so the counts are exact, not approximate.
// Anchors are processed in blocks whose distance rows come from one GEMM into a per-thread buffer;
// nothing N x N (or pairs x N) is allocated.
//
// Outputs per anchor: the loss sum over its triplets and the count of triplets with t > 1e-16 (the
// loss is sum(sums) / (sum(counts) + 1e-16)). The gradient goes through per-pair weights
//   W[a, p] = g_a * #{n: t(p, n) >= 0},  W[a, n] = -g_a * #{p: t(p, n) >= 0}
// applied tile by tile by pair_weight_gradient. The loss always weights every anchor alike
// (g_a = 1 / denominator), so when asked the forward already applies W for g = 1 and returns that
// gradient; the backward rescales it when the incoming gradient is uniform and recomputes
// otherwise. One distance GEMM is saved that way (forward + backward = 3 GEMM-sized products).
#include <torch/library.h>

#include <algorithm>

#include "cpu/pairwise_tiles.h"

namespace embedplug {
namespace cpu {
namespace {

// Above this many positives a sort plus binary searches beats comparing each negative with every
// positive (log2 of a few thousand negatives is ~12).
constexpr int64_t kSmallClassPositives = 16;
// ST counts a triplet as active when its loss exceeds this.
constexpr double kActiveTripletThreshold = 1e-16;

template <typename scalar_t>
inline scalar_t triplet_value(scalar_t positive, scalar_t negative, scalar_t margin) {
  return (positive - negative) + margin;  // ST's evaluation order
}

// Per-thread scratch and the per-anchor computation shared by the forward and the backward.
template <typename scalar_t>
struct BatchAllAnchor {
  const int64_t* labels;
  const ClassMembers* classes;
  int64_t n;
  scalar_t margin;
  std::vector<int64_t> positives, kept_per_positive;
  std::vector<scalar_t> positive_distance, sorted_negatives, sorted_positives;
  std::vector<double> prefix;

  // Loss sum and active-triplet count of anchor a; with `weights`, also writes W[a, :] for an
  // incoming gradient `grad` (the row must be zero on entry).
  std::pair<double, int64_t> process(const scalar_t* row, int64_t a, scalar_t grad, scalar_t* weights) {
    classes->positives_of(a, positives);
    // ST only looks at anchors with a positive.
    if (positives.empty()) return {0.0, 0};
    // ST turns any non-finite distance in the row into a NaN loss (0 * inf, inf - inf).
    if (has_non_finite(row, n)) {
      if (weights) std::fill(weights, weights + n, std::numeric_limits<scalar_t>::quiet_NaN());
      return {std::numeric_limits<double>::quiet_NaN(), 0};
    }
    const int64_t label = labels[a];
    const int64_t num_positives = static_cast<int64_t>(positives.size());
    positive_distance.resize(num_positives);
    for (int64_t k = 0; k < num_positives; ++k) positive_distance[k] = row[positives[k]];
    const scalar_t threshold = static_cast<scalar_t>(kActiveTripletThreshold);
    double sum = 0;
    int64_t count = 0;

    if (num_positives <= kSmallClassPositives) {
      kept_per_positive.assign(num_positives, 0);
      for (int64_t j = 0; j < n; ++j) {
        if (labels[j] == label) continue;
        const scalar_t negative = row[j];
        int64_t kept_here = 0;
        for (int64_t k = 0; k < num_positives; ++k) {
          const scalar_t t = triplet_value(positive_distance[k], negative, margin);
          const bool kept = t >= scalar_t(0);
          sum += kept ? t : scalar_t(0);
          count += t > threshold;
          kept_here += kept;
          kept_per_positive[k] += kept;
        }
        if (weights) weights[j] = -grad * static_cast<scalar_t>(kept_here);
      }
      if (weights) {
        for (int64_t k = 0; k < num_positives; ++k) {
          weights[positives[k]] = grad * static_cast<scalar_t>(kept_per_positive[k]);
        }
      }
      return {sum, count};
    }

    sorted_negatives.clear();
    for (int64_t j = 0; j < n; ++j) {
      if (labels[j] != label) sorted_negatives.push_back(row[j]);
    }
    std::sort(sorted_negatives.begin(), sorted_negatives.end());
    prefix.resize(sorted_negatives.size() + 1);
    prefix[0] = 0;
    for (size_t i = 0; i < sorted_negatives.size(); ++i) prefix[i + 1] = prefix[i] + sorted_negatives[i];
    for (int64_t k = 0; k < num_positives; ++k) {
      const scalar_t positive = positive_distance[k];
      const auto kept = std::partition_point(sorted_negatives.begin(), sorted_negatives.end(),
                                             [&](scalar_t negative) {
                                               return triplet_value(positive, negative, margin) >= scalar_t(0);
                                             }) -
                        sorted_negatives.begin();
      const auto active = std::partition_point(sorted_negatives.begin(), sorted_negatives.begin() + kept,
                                               [&](scalar_t negative) {
                                                 return triplet_value(positive, negative, margin) > threshold;
                                               }) -
                          sorted_negatives.begin();
      sum += static_cast<double>(kept) * (static_cast<double>(positive) + static_cast<double>(margin)) - prefix[kept];
      count += active;
      if (weights) weights[positives[k]] = grad * static_cast<scalar_t>(kept);
    }
    if (weights) {
      sorted_positives.assign(positive_distance.begin(), positive_distance.end());
      std::sort(sorted_positives.begin(), sorted_positives.end());
      for (int64_t j = 0; j < n; ++j) {
        if (labels[j] == label) continue;
        const scalar_t negative = row[j];
        // Positives too close to keep the triplet form a prefix of the ascending positives.
        const auto dropped = std::partition_point(sorted_positives.begin(), sorted_positives.end(),
                                                  [&](scalar_t positive) {
                                                    return triplet_value(positive, negative, margin) < scalar_t(0);
                                                  }) -
                             sorted_positives.begin();
        weights[j] = -grad * static_cast<scalar_t>(num_positives - dropped);
      }
    }
    return {sum, count};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_all_triplet_loss_forward_cpu(
    const at::Tensor& embeddings, const at::Tensor& labels, c10::string_view distance, double margin,
    bool compute_grad) {
  check_embeddings_and_labels(embeddings, labels);
  const DistanceKind kind = parse_distance(std::string_view(distance.data(), distance.size()));
  const int64_t n = embeddings.size(0);
  auto loss_sums = at::empty({n}, embeddings.options());
  auto counts = at::empty({n}, labels.options());
  at::Tensor unit_grad = at::empty({0}, embeddings.options());
  const auto labels_contiguous = labels.contiguous();
  const int64_t* label_ptr = labels_contiguous.data_ptr<int64_t>();
  const ClassMembers classes(label_ptr, n);
  AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "batch_all_triplet_loss_forward_cpu", [&] {
    scalar_t* sum_ptr = loss_sums.data_ptr<scalar_t>();
    int64_t* count_ptr = counts.data_ptr<int64_t>();
    const BatchAllAnchor<scalar_t> prototype{label_ptr, &classes, n, static_cast<scalar_t>(margin)};
    auto record = [&](int64_t a, std::pair<double, int64_t> result) {
      sum_ptr[a] = static_cast<scalar_t>(result.first);
      count_ptr[a] = result.second;
    };
    // Detached: worker threads do not inherit autograd guards, and the op has its own backward.
    const auto x = embeddings.detach();
    if (compute_grad) {
      unit_grad = pair_weight_gradient<scalar_t>(
          x, kind, row_block_size(n), [&](int64_t row_begin, int64_t row_end, const scalar_t* distances, scalar_t* weights) {
            BatchAllAnchor<scalar_t> anchor = prototype;
            std::fill(weights, weights + (row_end - row_begin) * n, scalar_t(0));
            for (int64_t a = row_begin; a < row_end; ++a) {
              const int64_t offset = (a - row_begin) * n;
              record(a, anchor.process(distances + offset, a, scalar_t(1), weights + offset));
            }
          });
      return;
    }
    const GemmOperand operand = prepare_row_block_operand(x, kind, row_block_size(n));
    for_each_distance_row_block<scalar_t>(
        operand, kind, row_block_size(n), [&](int64_t row_begin, int64_t row_end, const scalar_t* distances, int) {
          BatchAllAnchor<scalar_t> anchor = prototype;
          for (int64_t a = row_begin; a < row_end; ++a) {
            record(a, anchor.process(distances + (a - row_begin) * n, a, scalar_t(0), nullptr));
          }
        });
  });
  return {loss_sums, counts, unit_grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(embedplug, CPU, m) {
  m.impl("batch_all_triplet_loss_forward", &batch_all_triplet_loss_forward_cpu);
  m.impl("_batch_all_triplet_loss_backward", &per_anchor_loss_backward<BatchAllAnchor>);
}

}  // namespace cpu
}  // namespace embedplug
