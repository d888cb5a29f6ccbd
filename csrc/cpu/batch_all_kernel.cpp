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
#include "op_input_checks.h"

namespace embedplug {
namespace cpu {
namespace {

// Above this many positives a sort plus binary searches beats comparing each negative with every
// positive (log2 of a few thousand negatives is ~12).
constexpr int64_t kSmallClassPositives = 16;

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
    double sum = 0;
    int64_t count = 0;

    if (num_positives <= kSmallClassPositives) {
      kept_per_positive.assign(num_positives, 0);
      for (int64_t j = 0; j < n; ++j) {
        if (!is_negative_pair(label, labels[j])) continue;
        const scalar_t negative = row[j];
        int64_t kept_here = 0;
        for (int64_t k = 0; k < num_positives; ++k) {
          const scalar_t t = triplet_value(positive_distance[k], negative, margin);
          const bool kept = triplet_kept(t);
          sum += triplet_hinge(t);
          count += triplet_active(t);
          kept_here += kept;
          kept_per_positive[k] += kept;
        }
        if (weights) weights[j] = batch_all_negative_weight(grad, kept_here);
      }
      if (weights) {
        for (int64_t k = 0; k < num_positives; ++k) {
          weights[positives[k]] = batch_all_positive_weight(grad, kept_per_positive[k]);
        }
      }
      return {sum, count};
    }

    sorted_negatives.clear();
    for (int64_t j = 0; j < n; ++j) {
      if (is_negative_pair(label, labels[j])) sorted_negatives.push_back(row[j]);
    }
    std::sort(sorted_negatives.begin(), sorted_negatives.end());
    prefix.resize(sorted_negatives.size() + 1);
    prefix[0] = 0;
    for (size_t i = 0; i < sorted_negatives.size(); ++i) prefix[i + 1] = prefix[i] + sorted_negatives[i];
    for (int64_t k = 0; k < num_positives; ++k) {
      const scalar_t positive = positive_distance[k];
      const auto kept = std::partition_point(sorted_negatives.begin(), sorted_negatives.end(),
                                             [&](scalar_t negative) {
                                               return triplet_kept(triplet_value(positive, negative, margin));
                                             }) -
                        sorted_negatives.begin();
      const auto active = std::partition_point(sorted_negatives.begin(), sorted_negatives.begin() + kept,
                                               [&](scalar_t negative) {
                                                 return triplet_active(triplet_value(positive, negative, margin));
                                               }) -
                          sorted_negatives.begin();
      sum += static_cast<double>(kept) * (static_cast<double>(positive) + static_cast<double>(margin)) - prefix[kept];
      count += active;
      if (weights) weights[positives[k]] = batch_all_positive_weight(grad, static_cast<int64_t>(kept));
    }
    if (weights) {
      sorted_positives.assign(positive_distance.begin(), positive_distance.end());
      std::sort(sorted_positives.begin(), sorted_positives.end());
      for (int64_t j = 0; j < n; ++j) {
        if (!is_negative_pair(label, labels[j])) continue;
        const scalar_t negative = row[j];
        // Positives too close to keep the triplet form a prefix of the ascending positives.
        const auto dropped = std::partition_point(sorted_positives.begin(), sorted_positives.end(),
                                                  [&](scalar_t positive) {
                                                    return !triplet_kept(triplet_value(positive, negative, margin));
                                                  }) -
                             sorted_positives.begin();
        weights[j] = batch_all_negative_weight(grad, static_cast<int64_t>(num_positives - dropped));
      }
    }
    return {sum, count};
  }
};

// The distances d(j, p) from every sample j to its k-th positive p (index order), stored by k:
// distance[k * N + j], -inf where j has fewer than k + 1 positives (never counted as kept), so that
// the loops over a row's columns j vectorise. Each class's Gram matrix is one small GEMM; it may
// round differently from the row-block GEMM, which the caller corrects for.
template <typename scalar_t>
struct PositiveDistanceTable {
  int64_t max_positives = 0;
  std::vector<scalar_t> distance;

  PositiveDistanceTable(const GemmOperand& operand, DistanceKind kind, const ClassMembers& classes, int64_t n) {
    for (int64_t i = 0; i < n; ++i) max_positives = std::max(max_positives, classes.class_size(i) - 1);
    distance.assign(static_cast<size_t>(max_positives * n), -std::numeric_limits<scalar_t>::infinity());
    const scalar_t* squared_norms =
        operand.squared_norms.defined() ? operand.squared_norms.template data_ptr<scalar_t>() : nullptr;
    std::vector<int64_t> class_starts;
    for (int64_t i = 0; i < n; i = classes.class_end[classes.members[i]]) class_starts.push_back(i);
    const auto members = at::from_blob(const_cast<int64_t*>(classes.members.data()), {n}, at::kLong);
    at::parallel_for(0, static_cast<int64_t>(class_starts.size()), 64, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t first = class_starts[c];
        const int64_t size = classes.class_end[classes.members[first]] - first;
        if (size < 2) continue;
        const auto rows = operand.rows.index_select(0, members.narrow(0, first, size));
        const auto gram = at::mm(rows, rows.t()).contiguous();
        const scalar_t* dots = gram.template data_ptr<scalar_t>();
        for (int64_t r = 0; r < size; ++r) {
          const int64_t j = classes.members[first + r];
          int64_t k = 0;
          for (int64_t q = 0; q < size; ++q) {
            if (q == r) continue;
            const int64_t p = classes.members[first + q];
            const scalar_t dot = dots[r * size + q];
            distance[(k++) * n + j] = squared_norms ? finish_distance(kind, dot, squared_norms[j], squared_norms[p])
                                                    : finish_distance(kind, dot, scalar_t(0), scalar_t(0));
          }
        }
      }
    });
  }
};

// The forward's unit gradient with one gradient GEMM instead of two (symmetric_pair_weight_gradient),
// when every class is small: row a then also carries W[j, a] = -#{p in P_j : t(d_jp, d_ja) >= 0}
// for every anchor j it is a negative of, from j's positive distances (PositiveDistanceTable), and
// hands W[a, p] to each positive's row as a deferred weight. The table rounds some distances
// differently from the row-block GEMM; row j, which has the GEMM's values, corrects the few counts
// where that changes a decision (deferred too), so the gradient is the two-GEMM path's exactly
// (given the GEMM's d(a, j) = d(j, a)). Returns false, leaving the gradient to
// pair_weight_gradient, with a larger class (whose table would grow like N^2 / classes) or a
// non-finite distance (whose NaN must reach every row, as it does through the two GEMMs).
template <typename scalar_t, typename Record>
bool symmetric_unit_gradient(const at::Tensor& x, DistanceKind kind, const int64_t* labels,
                             const ClassMembers& classes, const BatchAllAnchor<scalar_t>& prototype, Record&& record,
                             at::Tensor& unit_grad) {
  const int64_t n = x.size(0);
  for (int64_t i = 0; i < n; ++i) {
    if (classes.class_size(i) - 1 > kSmallClassPositives) return false;
  }
  const int64_t block = row_block_size(n);
  const auto contiguous = x.contiguous();
  const GemmOperand operand = prepare_row_block_operand(contiguous, kind, block);
  const PositiveDistanceTable<scalar_t> table(operand, kind, classes, n);
  const scalar_t margin = prototype.margin;
  return symmetric_pair_weight_gradient<scalar_t>(
      contiguous, operand, kind, block,
      [&](int64_t row_begin, int64_t row_end, const scalar_t* distances, scalar_t* weights,
          std::vector<DeferredPairWeight<scalar_t>>& deferred) {
        BatchAllAnchor<scalar_t> anchor = prototype;
        std::vector<int64_t> members;
        std::vector<scalar_t> own_weights;
        for (int64_t a = row_begin; a < row_end; ++a) {
          const scalar_t* row = distances + (a - row_begin) * n;
          scalar_t* w = weights + (a - row_begin) * n;
          if (has_non_finite(row, n)) return false;
          std::fill(w, w + n, scalar_t(0));
          record(a, anchor.process(row, a, scalar_t(1), w));
          // W[j, a] for every column j, then the same-label columns (a itself and its positives,
          // for which a is no negative) put back to the row's own weights.
          members.assign(classes.members.begin() + classes.class_begin[a],
                         classes.members.begin() + classes.class_end[a]);
          own_weights.clear();
          for (const int64_t j : members) own_weights.push_back(w[j]);
          for (int64_t k = 0; k < table.max_positives; ++k) {
            const scalar_t* positive_distance = table.distance.data() + k * n;
            for (int64_t j = 0; j < n; ++j) {
              w[j] -= triplet_kept(triplet_value(positive_distance[j], row[j], margin)) ? scalar_t(1) : scalar_t(0);
            }
          }
          for (size_t i = 0; i < members.size(); ++i) w[members[i]] = own_weights[i];
          // W[a, p] belongs to positive p's row too.
          int64_t k = 0;
          for (const int64_t p : members) {
            if (p == a) continue;
            deferred.push_back({p, a, w[p], row[p]});
            // Other rows counted a's triplets (a, p, j) with the table's d(a, p); where it differs
            // from this row's own value, a decision can differ for d(a, j) between the two. Such
            // columns are found with a vectorisable scan; their counts are corrected to this
            // row's (ST's) decision.
            const scalar_t exact = row[p], tabled = table.distance[(k++) * n + a];
            if (exact == tabled) continue;
            const scalar_t low = std::min(exact, tabled), high = std::max(exact, tabled);
            bool any_differs = false;
            for (int64_t j = 0; j < n; ++j) {
              any_differs |= !triplet_kept(triplet_value(low, row[j], margin)) &
                             triplet_kept(triplet_value(high, row[j], margin));
            }
            if (!any_differs) continue;
            for (int64_t j = 0; j < n; ++j) {
              if (!is_negative_pair(labels[a], labels[j])) continue;
              const bool kept_exact = triplet_kept(triplet_value(exact, row[j], margin));
              const bool kept_table = triplet_kept(triplet_value(tabled, row[j], margin));
              if (kept_exact != kept_table) deferred.push_back({j, a, kept_exact ? scalar_t(-1) : scalar_t(1), row[j]});
            }
          }
        }
        return true;
      },
      unit_grad);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_all_triplet_loss_forward_cpu(
    const at::Tensor& embeddings, const at::Tensor& labels, c10::string_view distance, double margin,
    bool compute_grad) {
  check_finite_option("batch_all_triplet_loss_forward", "margin", margin);
  check_floating_inputs("batch_all_triplet_loss_forward", {{"embeddings", &embeddings}});
  check_int64_input("batch_all_triplet_loss_forward", "labels", labels);
  check_cpu_embeddings_and_labels(embeddings, labels);
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
    if (compute_grad && symmetric_unit_gradient<scalar_t>(x, kind, label_ptr, classes, prototype, record, unit_grad)) {
      return;
    }
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

// The shared backward behind the op's own input checks, so that errors name the op.
at::Tensor batch_all_triplet_loss_backward_cpu(const at::Tensor& grad_sums, const at::Tensor& embeddings,
                                              const at::Tensor& labels, const at::Tensor& unit_grad,
                                              c10::string_view distance, double margin) {
  check_finite_option("_batch_all_triplet_loss_backward", "margin", margin);
  check_floating_inputs("_batch_all_triplet_loss_backward", {{"embeddings", &embeddings}});
  check_floating_inputs("_batch_all_triplet_loss_backward", {{"grad_sums", &grad_sums}});
  check_int64_input("_batch_all_triplet_loss_backward", "labels", labels);
  return per_anchor_loss_backward<BatchAllAnchor>(grad_sums, embeddings, labels, unit_grad, distance, margin);
}

TORCH_LIBRARY_IMPL(embedplug, CPU, m) {
  m.impl("batch_all_triplet_loss_forward", &batch_all_triplet_loss_forward_cpu);
  m.impl("_batch_all_triplet_loss_backward", &batch_all_triplet_loss_backward_cpu);
}

}  // namespace cpu
}  // namespace embedplug
