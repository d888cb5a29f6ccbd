// Rules of dataset-scale hard-negative top-k (issue #21), shared by the CPU kernel
// (csrc/cpu/hard_negative_topk_kernel.cpp) and the CUDA kernel (csrc/cuda/hard_negative_topk_kernel.cu):
// which rule removes a candidate, the ranking order, and the running k-best list. Host/device
// functions, no CUDA includes, so g++ compiles them and the CPU suite runs every rule the GPU runs.
//
// The semantics are embedplug/reference/hard_negative_topk.py's (sentence-transformers'
// mine_hard_negatives): every comparison is made in the scores' dtype, each option cast to it first,
// as torch compares a float32 tensor with a Python float.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>
#include <limits>

#include "rounding_rules.h"

namespace embedplug {
namespace hard_negative_topk {

// Which rule removes a candidate, in the order the rules run; also the slot of its count in
// `removed` (REMOVAL_NAMES in the reference). kKept: no rule removes it.
enum Removal : int {
  kExcluded = 0,
  kPositive = 1,
  kAbsoluteMargin = 2,
  kRelativeMargin = 3,
  kMaxScore = 4,
  kMinScore = 5,
  kKept = 6,
};
inline constexpr int kRemovalRules = 6;

template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t positive_infinity() {
  return std::numeric_limits<scalar_t>::infinity();
}

// The score filters of one query with every disabled filter set to a value that never fires, so
// that the per-score decision is the same branch-free expression whatever the options are.
template <typename scalar_t>
struct ScoreFilters {
  scalar_t absolute_margin;  // 0 when disabled
  scalar_t absolute_bound;   // the hardest positive; +inf when disabled or without a positive
  scalar_t relative_bound;   // p - |p| * relative_margin; +inf when disabled or without a positive
  scalar_t max_score;        // +inf when disabled
  scalar_t min_score;        // -inf when disabled
};

// p - |p| * relative_margin with the product rounded first on both backends (difference_of_product:
// a candidate on the bound falls on the same side on CPU and GPU). NaN (a query without a positive:
// inf - inf) becomes +inf, as the reference's nan_to_num does: nothing is above it.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t relative_margin_bound(scalar_t hardest_positive, scalar_t relative_margin) {
  const scalar_t magnitude = hardest_positive < scalar_t(0) ? -hardest_positive : hardest_positive;
  const scalar_t bound = difference_of_product(hardest_positive, magnitude, relative_margin);
  return bound != bound ? positive_infinity<scalar_t>() : bound;
}

// The lowest of a query's positive scores (padding, index < 0, skipped); +inf without a positive.
// A NaN score propagates, as torch.amin does.
template <typename scalar_t>
C10_HOST_DEVICE inline scalar_t hardest_positive_score(const scalar_t* positive_scores, const int64_t* positives,
                                                       int64_t width) {
  scalar_t hardest = positive_infinity<scalar_t>();
  for (int64_t j = 0; j < width; ++j) {
    if (positives[j] < 0) continue;
    const scalar_t score = positive_scores[j];
    if (score != score || score < hardest) hardest = score;
    if (hardest != hardest) break;
  }
  return hardest;
}

// One query's filters from the options (has_* false: that filter is off). Computed in host code
// once per query; the kernels only read the result.
template <typename scalar_t>
C10_HOST_DEVICE inline ScoreFilters<scalar_t> make_score_filters(scalar_t hardest_positive, bool has_absolute_margin,
                                                                 scalar_t absolute_margin, bool has_relative_margin,
                                                                 scalar_t relative_margin, bool has_max_score,
                                                                 scalar_t max_score, bool has_min_score,
                                                                 scalar_t min_score) {
  const scalar_t inf = positive_infinity<scalar_t>();
  ScoreFilters<scalar_t> filters;
  filters.absolute_margin = has_absolute_margin ? absolute_margin : scalar_t(0);
  filters.absolute_bound = has_absolute_margin ? hardest_positive : inf;
  filters.relative_bound = has_relative_margin ? relative_margin_bound(hardest_positive, relative_margin) : inf;
  filters.max_score = has_max_score ? max_score : inf;
  filters.min_score = has_min_score ? min_score : -inf;
  return filters;
}

// Which score filter removes a score, as one 0/1 flag per filter of which at most one is set (the
// first filter in order that fires). Integer and/or only, no selects or control flow: a loop that sums
// the flags over a row of scores vectorises (GCC turns selects feeding the sums into conditional
// reductions, which it does not vectorise). `score + margin` is rounded to scalar_t before the
// comparison, as the reference's tensor sum is. -inf (already removed, or an empty slot) is never
// counted by min_score (sentence-transformers 6.3).
struct ScoreRemovals {
  int absolute_margin, relative_margin, max_score, min_score;
};

template <typename scalar_t>
C10_HOST_DEVICE inline ScoreRemovals score_removals(scalar_t score, const ScoreFilters<scalar_t>& filters) {
  const scalar_t shifted = score + filters.absolute_margin;
  const int absolute = shifted > filters.absolute_bound;
  const int relative = (score > filters.relative_bound) & ~absolute & 1;
  const int maximum = (score > filters.max_score) & ~(absolute | relative) & 1;
  const int minimum = (score < filters.min_score) & (score != -positive_infinity<scalar_t>()) &
                      ~(absolute | relative | maximum) & 1;
  return {absolute, relative, maximum, minimum};
}

// The first score filter that removes `score` (a Removal), or kKept.
template <typename scalar_t>
C10_HOST_DEVICE inline int score_removal(scalar_t score, const ScoreFilters<scalar_t>& filters) {
  const ScoreRemovals flags = score_removals(score, filters);
  return kKept - (kKept - kAbsoluteMargin) * flags.absolute_margin - (kKept - kRelativeMargin) * flags.relative_margin -
         (kKept - kMaxScore) * flags.max_score - (kKept - kMinScore) * flags.min_score;
}

// Whether corpus row `column` is listed for the query: kExcluded if among `excluded` [excluded_width],
// else kPositive if among `positives` [positive_width] and positives are excluded, else kKept.
// Padding entries (-1) match nothing.
C10_HOST_DEVICE inline int listed_removal(int64_t column, const int64_t* excluded, int64_t excluded_width,
                                          const int64_t* positives, int64_t positive_width,
                                          bool exclude_positives) {
  for (int64_t j = 0; j < excluded_width; ++j) {
    if (excluded[j] == column) return kExcluded;
  }
  if (exclude_positives) {
    for (int64_t j = 0; j < positive_width; ++j) {
      if (positives[j] == column) return kPositive;
    }
  }
  return kKept;
}

// The rule that removes a candidate: a listed row first (but a -inf score, an empty slot, is not
// counted), then the score filters. `listed` is listed_removal's answer.
template <typename scalar_t>
C10_HOST_DEVICE inline int candidate_removal(int listed, scalar_t score, const ScoreFilters<scalar_t>& filters) {
  if (listed != kKept && score != -positive_infinity<scalar_t>()) return listed;
  return score_removal(score, filters);
}

// The ranking order of candidates: score descending, ties by the lower corpus index. An empty slot
// (index < 0, score -inf) ranks after every real candidate and a -inf candidate never ranks before
// it, so -inf scores never enter a list (the reference pads with (-inf, -1) where they would be).
// NaN ranks before nothing.
template <typename scalar_t>
C10_HOST_DEVICE inline bool ranks_before(scalar_t score, int64_t index, scalar_t other_score, int64_t other_index) {
  if (score > other_score) return true;
  return score == other_score && other_index >= 0 && index < other_index;
}

// Inserts (score, index) into a list of `keep` entries sorted by ranks_before, dropping the last, if
// it ranks before the last entry; returns whether it entered. Binary search for the position, then
// one shift: O(log keep) comparisons. The result does not depend on the order in which candidates
// arrive (the order is total over distinct indices), which is what lets the CUDA kernel insert a
// tile's candidates in any order and still be deterministic.
template <typename scalar_t>
C10_HOST_DEVICE inline bool insert_ranked(scalar_t* scores, int64_t* indices, int64_t keep, scalar_t score,
                                          int64_t index) {
  if (keep <= 0 || !ranks_before(score, index, scores[keep - 1], indices[keep - 1])) return false;
  int64_t low = 0;
  int64_t high = keep - 1;  // the new entry goes before position `high`
  while (low < high) {
    const int64_t middle = low + (high - low) / 2;
    if (ranks_before(score, index, scores[middle], indices[middle])) {
      high = middle;
    } else {
      low = middle + 1;
    }
  }
  for (int64_t position = keep - 1; position > low; --position) {
    scores[position] = scores[position - 1];
    indices[position] = indices[position - 1];
  }
  scores[low] = score;
  indices[low] = index;
  return true;
}

// Writes the survivors of one query's ranked list [keep] ranked first..first + k - 1 to `out_*` [k],
// padded with (-inf, -1). With `apply_rules` (window mode: the list holds the raw best), each entry's
// removal rule is decided here and counted in `removed` [kRemovalRules]; without it (open mode) the
// rules already ran before the list. The list's order is the survivors' order, so no re-sort.
template <typename scalar_t>
C10_HOST_DEVICE inline void emit_ranked_survivors(const scalar_t* scores, const int64_t* indices, int64_t keep,
                                                  bool apply_rules, const int64_t* excluded, int64_t excluded_width,
                                                  const int64_t* positives, int64_t positive_width,
                                                  bool exclude_positives, const ScoreFilters<scalar_t>& filters,
                                                  int64_t first, int64_t k, scalar_t* out_scores,
                                                  int64_t* out_indices, int64_t* removed) {
  int64_t rank = 0;
  int64_t written = 0;
  // Every entry is visited, also after the k-th survivor: the counts cover the whole list.
  for (int64_t position = 0; position < keep; ++position) {
    const int64_t index = indices[position];
    if (index < 0) break;  // empty slots are last
    if (apply_rules) {
      const int listed =
          listed_removal(index, excluded, excluded_width, positives, positive_width, exclude_positives);
      const int rule = candidate_removal(listed, scores[position], filters);
      if (rule != kKept) {
        removed[rule] += 1;
        continue;
      }
    } else if (written == k) {
      break;
    }
    if (rank++ < first || written == k) continue;
    out_scores[written] = scores[position];
    out_indices[written] = index;
    ++written;
  }
  for (; written < k; ++written) {
    out_scores[written] = -positive_infinity<scalar_t>();
    out_indices[written] = -1;
  }
}

}  // namespace hard_negative_topk
}  // namespace embedplug
