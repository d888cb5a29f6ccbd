// Host code both hard_negative_topk kernels share: the input checks (so a raw torch.ops call fails
// with a message naming the argument, on CPU and CUDA alike) and the resolved options. Host-only; no
// CUDA includes. The per-candidate math is in hard_negative_topk_rules.h.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <utility>

#include "op_input_checks.h"

namespace embedplug {
namespace hard_negative_topk {

// The options of one call, resolved: `keep` is the length of each query's running list (open mode:
// range_min + k survivors; window mode: range_max + reserved_slots raw rows, the rules applied after).
struct TopKPlan {
  int64_t k;
  int64_t range_min;
  int64_t keep;
  bool window;
  bool exclude_positives;
  bool has_absolute_margin, has_relative_margin, has_max_score, has_min_score;
  double absolute_margin, relative_margin, max_score, min_score;
};

inline void check_index_matrix(const char* name, const at::Tensor& matrix, int64_t num_queries, int64_t num_corpus) {
  check_int64_input("hard_negative_topk", name, matrix);
  TORCH_CHECK_VALUE(matrix.dim() == 2 && matrix.size(0) == num_queries, "embedplug::hard_negative_topk: ", name,
                    " must be [Q, width] with Q = ", num_queries, " (-1 as padding), got shape ", matrix.sizes());
  if (matrix.numel() == 0) return;
  // One reduction (a device sync on CUDA): an index outside the corpus would silently match nothing.
  const auto [lowest, highest] = at::aminmax(matrix);
  const int64_t low = lowest.item<int64_t>();
  const int64_t high = highest.item<int64_t>();
  TORCH_CHECK_INDEX(low >= -1 && high < num_corpus, "embedplug::hard_negative_topk: ", name,
                    " holds corpus indices outside 0..", num_corpus - 1, " (-1 marks padding): min ", low, ", max ",
                    high);
}

inline TopKPlan check_hard_negative_topk_inputs(const at::Tensor& queries, const at::Tensor& corpus, int64_t k,
                                                const at::Tensor& positives, const at::Tensor& positive_scores,
                                                const at::Tensor& excluded, bool exclude_positives,
                                                std::optional<double> absolute_margin,
                                                std::optional<double> relative_margin,
                                                std::optional<double> max_score, std::optional<double> min_score,
                                                int64_t range_min, std::optional<int64_t> range_max,
                                                std::optional<int64_t> reserved_slots) {
  const char* op = "hard_negative_topk";
  check_floating_inputs(op, {{"queries", &queries}, {"corpus", &corpus}});
  TORCH_CHECK_VALUE(queries.dim() == 2 && corpus.dim() == 2,
                    "embedplug::hard_negative_topk: queries [Q, D] and corpus [C, D] must be 2-D, got shapes ",
                    queries.sizes(), " and ", corpus.sizes());
  TORCH_CHECK_VALUE(queries.size(1) == corpus.size(1),
                    "embedplug::hard_negative_topk: queries and corpus must have the same embedding dimension, got ",
                    queries.size(1), " and ", corpus.size(1));
  TORCH_CHECK_VALUE(queries.size(0) >= 1 && corpus.size(0) >= 1,
                    "embedplug::hard_negative_topk: needs at least one query and one corpus row, got Q = ",
                    queries.size(0), ", C = ", corpus.size(0));
  const int64_t num_queries = queries.size(0);
  const int64_t num_corpus = corpus.size(0);
  TORCH_CHECK_VALUE(k >= 1, "embedplug::hard_negative_topk: k must be at least 1, got ", k);
  TORCH_CHECK_VALUE(range_min >= 0, "embedplug::hard_negative_topk: range_min must be >= 0, got ", range_min);
  check_index_matrix("positives", positives, num_queries, num_corpus);
  check_index_matrix("excluded", excluded, num_queries, num_corpus);
  TORCH_CHECK_TYPE(positive_scores.is_floating_point(),
                   "embedplug::hard_negative_topk: positive_scores must be a floating-point tensor, got ",
                   positive_scores.scalar_type());
  TORCH_CHECK_VALUE(positive_scores.sizes() == positives.sizes(),
                    "embedplug::hard_negative_topk: positive_scores must match positives' shape ", positives.sizes(),
                    ", got ", positive_scores.sizes());
  TORCH_CHECK_VALUE(positive_scores.device() == queries.device(),
                    "embedplug::hard_negative_topk: positive_scores are on ", positive_scores.device(),
                    " but queries on ", queries.device());
  TopKPlan plan{};
  plan.k = k;
  plan.range_min = range_min;
  plan.exclude_positives = exclude_positives;
  plan.window = range_max.has_value();
  if (plan.window) {
    TORCH_CHECK_VALUE(range_min < *range_max, "embedplug::hard_negative_topk: range_min must be smaller than range_max, got ",
                      range_min, " and ", *range_max);
    TORCH_CHECK_VALUE(k <= *range_max - range_min, "embedplug::hard_negative_topk: k = ", k,
                      " does not fit the rank window: only range_max - range_min = ", *range_max - range_min,
                      " candidates are kept");
    const int64_t reserved = reserved_slots.has_value() ? *reserved_slots : positives.size(1) + excluded.size(1);
    TORCH_CHECK_VALUE(reserved >= 0, "embedplug::hard_negative_topk: reserved_slots must be >= 0, got ", reserved);
    // No list is longer than the corpus: the rows past it would stay empty.
    plan.keep = std::min(*range_max + reserved, num_corpus);
  } else {
    plan.keep = std::min(range_min + k, num_corpus);
  }
  const std::pair<const char*, const std::optional<double>*> options[] = {
      {"absolute_margin", &absolute_margin}, {"relative_margin", &relative_margin},
      {"max_score", &max_score}, {"min_score", &min_score}};
  for (const auto& [name, value] : options) {
    if (value->has_value()) check_finite_option(op, name, **value);
  }
  plan.has_absolute_margin = absolute_margin.has_value();
  plan.absolute_margin = absolute_margin.value_or(0.0);
  plan.has_relative_margin = relative_margin.has_value();
  plan.relative_margin = relative_margin.value_or(0.0);
  plan.has_max_score = max_score.has_value();
  plan.max_score = max_score.value_or(0.0);
  plan.has_min_score = min_score.has_value();
  plan.min_score = min_score.value_or(0.0);
  return plan;
}

}  // namespace hard_negative_topk
}  // namespace embedplug
