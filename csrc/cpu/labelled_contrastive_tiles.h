// The CPU passes of the label-aware contrastive losses (SupCon, MultiSimilarity with or without its
// miner, Circle) over upper-triangular Gram tiles of the unit rows.
//
// Why tiles: s_ij = s_ji, and what a pair contributes depends on the pair (its label test, its logit
// in a group) and on the row it is read from (that row's miner thresholds, group maxima and
// coefficients). So each unordered pair is computed once per pass, half a GEMM, and feeds both of its
// rows: along a tile row for the row's side, and through per-column arrays (the column rows'
// thresholds, maxima, coefficients, running sums) for the column's side, with no transpose. Passes:
//   scan  with the miner only: each row's hardest positive and negative, which must be final before
//         any pair is kept or dropped. Pair counts come from the class sizes and non-finite rows
//         from the unit rows (a NaN row makes every similarity row non-finite), so the losses
//         without the miner need no scan;
//   lse   per row and group the maximum and exp sum of the kept logits, merged tile by tile as an
//         online softmax does ((m, s) with (m', s') -> (M, s e^(m - M) + s' e^(m' - M))), plus kept
//         counts and SupCon's positive-logit sum; rules::finish_row turns them into the row's loss
//         and gradient coefficients;
//   grad  per tile M[a, j] = W[a, j] + W[j, a], W[a, j] = row_weight_a * d loss_a / d s_aj, then
//         G[I] += M U[J] and G[J] += M^T U[I].
// Multiply-adds: N^2 D / 2 for the lse pass and for the grad pass's recomputation, N^2 D for its two
// tile GEMMs; 2 N^2 D in all (2.5 with the miner's scan), against 3 N^2 D for full rows with a
// row-side and a column-side gradient GEMM. Memory: per thread a few tile buffers, O(N) row states
// and, in the grad pass, one N x D accumulator.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/pairwise_tiles.h"
#include "infonce_rules.h"
#include "labelled_contrastive_rules.h"

namespace embedplug {
namespace cpu {
namespace contrastive_tiles {

using infonce::RunningLogSumExp;
using rules::ContrastiveLoss;
using rules::ContrastiveParams;
using rules::kNegativeGroup;
using rules::kPositiveGroup;
using rules::PairRule;

template <typename scalar_t>
constexpr scalar_t minus_infinity() {
  return -std::numeric_limits<scalar_t>::infinity();
}

// Gram tiles of 256 x 256 (256 KiB in fp32) stay in L2 while the epilogue reads them; small batches
// get smaller tiles so that both threads have tiles to work on.
inline int64_t contrastive_tile_size(int64_t n) {
  const int64_t per_side = (n + 7) / 8;
  return std::clamp<int64_t>((per_side + 15) / 16 * 16, 32, 256);
}

// Labels as dense int32 class ids, and each sample's class size: the label test then vectorises
// (no 64-bit compares in SSE2), and pair counts need no pass over the pairs.
struct LabelClasses {
  std::vector<int32_t> ids;
  std::vector<int64_t> class_size;  // per sample: how many samples share its label, itself included

  LabelClasses(const int64_t* labels, int64_t n) : ids(n), class_size(n) {
    std::vector<int64_t> sorted(labels, labels + n);
    std::sort(sorted.begin(), sorted.end());
    sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
    std::vector<int64_t> members(sorted.size(), 0);
    for (int64_t i = 0; i < n; ++i) {
      ids[i] = static_cast<int32_t>(std::lower_bound(sorted.begin(), sorted.end(), labels[i]) - sorted.begin());
      ++members[ids[i]];
    }
    for (int64_t i = 0; i < n; ++i) class_size[i] = members[ids[i]];
  }
};

// The miner's thresholds per row: its hardest (least similar) positive and hardest negative.
template <typename scalar_t>
struct Thresholds {
  std::vector<scalar_t> hardest_positive, hardest_negative;

  explicit Thresholds(int64_t n)
      : hardest_positive(n, std::numeric_limits<scalar_t>::infinity()), hardest_negative(n, minus_infinity<scalar_t>()) {}

  void merge(const Thresholds& other, int64_t a) {
    hardest_positive[a] = rules::rule_min(hardest_positive[a], other.hardest_positive[a]);
    hardest_negative[a] = rules::rule_max(hardest_negative[a], other.hardest_negative[a]);
  }
};

// (m, s) <- the log-sum-exp state of both sets, through the extension's one online merge
// (infonce::RunningLogSumExp). A state with m = -inf holds nothing. NaN similarities are not
// tracked here: any non-finite row makes every loss NaN (rules::RowCounts::non_finite).
template <typename scalar_t>
inline void merge_log_sum_exp(scalar_t& m, scalar_t& s, scalar_t other_m, scalar_t other_s) {
  RunningLogSumExp<scalar_t> state = RunningLogSumExp<scalar_t>::of(m, s);
  state.merge(RunningLogSumExp<scalar_t>::of(other_m, other_s));
  m = state.maximum;
  s = state.sum;
}

// lse pass results, one entry per row and group.
template <typename scalar_t>
struct GroupStates {
  std::vector<scalar_t> maximum[2], exp_sum[2];
  std::vector<int64_t> kept[2];
  std::vector<scalar_t> positive_logit_sum;

  explicit GroupStates(int64_t n) : positive_logit_sum(n, scalar_t(0)) {
    for (int g = 0; g < 2; ++g) {
      maximum[g].assign(n, minus_infinity<scalar_t>());
      exp_sum[g].assign(n, scalar_t(0));
      kept[g].assign(n, 0);
    }
  }

  void merge(const GroupStates& other, int64_t a) {
    for (int g = 0; g < 2; ++g) {
      merge_log_sum_exp(maximum[g][a], exp_sum[g][a], other.maximum[g][a], other.exp_sum[g][a]);
      kept[g][a] += other.kept[g][a];
    }
    positive_logit_sum[a] += other.positive_logit_sum[a];
  }
};

// The shared PairRule with, for the column side, a row's thresholds read from per-column arrays
// (only with the miner: without it the arrays are null and every pair is kept).
template <ContrastiveLoss Loss, bool Mine, typename scalar_t>
inline bool column_keeps(const PairRule<Loss, Mine, scalar_t>& rule, scalar_t s, bool same,
                         const scalar_t* hardest_positive, const scalar_t* hardest_negative, int64_t c) {
  if (!Mine) return true;
  const scalar_t positive_threshold = hardest_positive[c], negative_threshold = hardest_negative[c];
  return rule.keeps(s, same, positive_threshold, negative_threshold);
}

// A Gram tile as the loops read it: s between rows [row_begin, row_begin + rows) and columns
// [col_begin, col_begin + cols), row-major. On a diagonal tile (columns = rows) column r is row r's
// anchor; the scan and lse passes update only the row side there (the column side would count each
// pair twice), and the grad pass writes the whole symmetric M.
template <typename scalar_t>
struct Tile {
  const scalar_t* gram;
  int64_t row_begin, rows, col_begin, cols;
  bool diagonal;
};

// What each row loop of a tile reads about its row: the anchor, its label, its own column on a
// diagonal tile (-1: none) and, with the miner, its thresholds.
template <bool Mine, typename scalar_t>
struct TileRow {
  int64_t a;
  int32_t label, self;
  scalar_t hardest_positive, hardest_negative;
  const scalar_t* s;

  TileRow(const Tile<scalar_t>& t, int64_t r, const int32_t* ids, const Thresholds<scalar_t>* thresholds)
      : a(t.row_begin + r),
        label(ids[a]),
        self(t.diagonal ? static_cast<int32_t>(r) : -1),
        hardest_positive(Mine ? thresholds->hardest_positive[a] : scalar_t(0)),
        hardest_negative(Mine ? thresholds->hardest_negative[a] : scalar_t(0)),
        s(t.gram + r * t.cols) {}
};

// Per-thread scratch: two tile-sized buffers and per-column accumulators.
template <typename scalar_t>
struct TileScratch {
  std::vector<scalar_t> row_values, column_values;  // logits, shifted logits, exps, pair weights
  std::vector<scalar_t> row_maximum, column_maximum, column_sum, column_positive_logit_sum;
  std::vector<int32_t> column_kept;
  std::vector<int32_t> column_index;  // 0, 1, ..., tile - 1
  std::vector<scalar_t> positive_logits, negative_logits;  // one row's kept logits per group

  void reserve(int64_t tile) {
    positive_logits.resize(static_cast<size_t>(tile));
    negative_logits.resize(static_cast<size_t>(tile));
    column_index.resize(static_cast<size_t>(tile));
    for (int64_t c = 0; c < tile; ++c) column_index[c] = static_cast<int32_t>(c);
    row_values.resize(static_cast<size_t>(tile * tile));
    column_values.resize(static_cast<size_t>(tile * tile));
    row_maximum.resize(static_cast<size_t>(2 * tile));
    column_maximum.resize(static_cast<size_t>(2 * tile));
    column_sum.resize(static_cast<size_t>(2 * tile));
    column_positive_logit_sum.resize(static_cast<size_t>(tile));
    column_kept.resize(static_cast<size_t>(2 * tile));
  }
};

template <typename scalar_t>
void exp_in_place(scalar_t* values, int64_t entries) {
  at::from_blob(values, {entries}, at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value)).exp_();
}

// The tile loops are written for the vectoriser: every load unconditional (a load under a
// condition keeps the branch), the anchor's own column found by an int32 compare against
// TileScratch::column_index (no 64-bit compares in SSE2), and the row reductions under
// `omp simd reduction`, which licenses reassociating them (IEEE order otherwise forbids it).

// The miner's scan over one tile: each row's hardest positive / negative, and each column's.
template <typename scalar_t>
void scan_tile(const Tile<scalar_t>& t, const int32_t* ids, TileScratch<scalar_t>& scratch, Thresholds<scalar_t>& out) {
  const scalar_t inf = std::numeric_limits<scalar_t>::infinity();
  const int32_t* column_ids = ids + t.col_begin;
  const int32_t* column_index = scratch.column_index.data();
  scalar_t* column_positive = scratch.column_maximum.data();
  scalar_t* column_negative = column_positive + t.cols;
  std::fill(column_positive, column_positive + t.cols, inf);
  std::fill(column_negative, column_negative + t.cols, -inf);
  for (int64_t r = 0; r < t.rows; ++r) {
    const int64_t a = t.row_begin + r;
    const int32_t label = ids[a];
    const int32_t self = t.diagonal ? static_cast<int32_t>(r) : -1;
    const scalar_t* s = t.gram + r * t.cols;
    // Candidates to row buffers first, reductions in loops of their own (see group_sums_tile).
    scalar_t* positives = scratch.positive_logits.data();
    scalar_t* negatives = scratch.negative_logits.data();
#pragma omp simd
    for (int64_t c = 0; c < t.cols; ++c) {
      const bool same = column_ids[c] == label;
      negatives[c] = same ? -inf : s[c];
      positives[c] = (same & (column_index[c] != self)) ? s[c] : inf;
    }
    scalar_t hardest_positive = inf, hardest_negative = -inf;
#pragma omp simd reduction(min : hardest_positive) reduction(max : hardest_negative)
    for (int64_t c = 0; c < t.cols; ++c) {
      hardest_negative = hardest_negative < negatives[c] ? negatives[c] : hardest_negative;
      hardest_positive = positives[c] < hardest_positive ? positives[c] : hardest_positive;
    }
    out.hardest_positive[a] = rules::rule_min(out.hardest_positive[a], hardest_positive);
    out.hardest_negative[a] = rules::rule_max(out.hardest_negative[a], hardest_negative);
    if (t.diagonal) continue;
#pragma omp simd
    for (int64_t c = 0; c < t.cols; ++c) {
      const bool same = column_ids[c] == label;
      const scalar_t negative = same ? -inf : s[c];
      const scalar_t positive = same ? s[c] : inf;
      column_negative[c] = column_negative[c] < negative ? negative : column_negative[c];
      column_positive[c] = positive < column_positive[c] ? positive : column_positive[c];
    }
  }
  if (t.diagonal) return;
  for (int64_t c = 0; c < t.cols; ++c) {
    const int64_t j = t.col_begin + c;
    out.hardest_positive[j] = rules::rule_min(out.hardest_positive[j], column_positive[c]);
    out.hardest_negative[j] = rules::rule_max(out.hardest_negative[j], column_negative[c]);
  }
}

// The lse pass over one tile, merged into `out` for its rows and (off the diagonal) its columns.
template <ContrastiveLoss Loss, bool Mine, typename scalar_t>
void group_sums_tile(const PairRule<Loss, Mine, scalar_t> rule, const Tile<scalar_t>& t, const int32_t* ids,
                     const Thresholds<scalar_t>* thresholds, TileScratch<scalar_t>& scratch, GroupStates<scalar_t>& out) {
  using Rule = PairRule<Loss, Mine, scalar_t>;
  constexpr bool kSupCon = Loss == ContrastiveLoss::kSupCon;
  const scalar_t ninf = minus_infinity<scalar_t>();
  const bool columns = !t.diagonal;
  const int32_t* column_ids = ids + t.col_begin;
  const int32_t* column_index = scratch.column_index.data();
  const scalar_t* column_hardest_positive = Mine ? thresholds->hardest_positive.data() + t.col_begin : nullptr;
  const scalar_t* column_hardest_negative = Mine ? thresholds->hardest_negative.data() + t.col_begin : nullptr;
  scalar_t* column_maximum_positive = scratch.column_maximum.data();
  scalar_t* column_maximum_negative = column_maximum_positive + t.cols;
  scalar_t* column_sum_positive = scratch.column_sum.data();
  scalar_t* column_sum_negative = column_sum_positive + t.cols;
  scalar_t* column_positive_logit_sum = scratch.column_positive_logit_sum.data();
  int32_t* column_kept_positive = scratch.column_kept.data();
  int32_t* column_kept_negative = column_kept_positive + t.cols;
  scalar_t* row_maximum = scratch.row_maximum.data();  // [rows][2]
  std::fill(column_maximum_positive, column_maximum_positive + 2 * t.cols, ninf);
  std::fill(column_sum_positive, column_sum_positive + 2 * t.cols, scalar_t(0));
  std::fill(column_positive_logit_sum, column_positive_logit_sum + t.cols, scalar_t(0));
  std::fill(column_kept_positive, column_kept_positive + 2 * t.cols, 0);

  // Logits, group maxima, kept counts and SupCon's positive-logit sums.
  for (int64_t r = 0; r < t.rows; ++r) {
    const TileRow<Mine, scalar_t> row(t, r, ids, thresholds);
    const int64_t a = row.a;
    const int32_t label = row.label, self = row.self;
    const scalar_t hardest_positive = row.hardest_positive, hardest_negative = row.hardest_negative;
    const scalar_t* s = row.s;
    scalar_t* logits = scratch.row_values.data() + r * t.cols;
    // The kept logits per group go to two row buffers and are reduced by loops of their own: a
    // float max reduction next to the selects keeps the loop from vectorising.
    scalar_t* positive_logits = scratch.positive_logits.data();
    scalar_t* negative_logits = scratch.negative_logits.data();
    scalar_t positive_logit_sum = 0;
    int32_t kept_positive = 0, kept_negative = 0;
#pragma omp simd reduction(+ : kept_positive, kept_negative, positive_logit_sum)
    for (int64_t c = 0; c < t.cols; ++c) {
      const bool same = column_ids[c] == label;
      const scalar_t logit = rule.logit(s[c], same);
      logits[c] = logit;
      const bool keep = rule.keeps(s[c], same, hardest_positive, hardest_negative) & (column_index[c] != self);
      const bool positive = keep & Rule::in_positive_group(same);
      const bool negative = keep & !Rule::in_positive_group(same);
      positive_logits[c] = positive ? logit : ninf;
      negative_logits[c] = negative ? logit : ninf;
      kept_positive += positive ? 1 : 0;
      kept_negative += negative ? 1 : 0;
      if (kSupCon) positive_logit_sum += (keep & same) ? logit : scalar_t(0);
    }
    scalar_t maximum_positive = ninf, maximum_negative = ninf;
#pragma omp simd reduction(max : maximum_positive, maximum_negative)
    for (int64_t c = 0; c < t.cols; ++c) {
      maximum_positive = maximum_positive < positive_logits[c] ? positive_logits[c] : maximum_positive;
      maximum_negative = maximum_negative < negative_logits[c] ? negative_logits[c] : maximum_negative;
    }
    row_maximum[2 * r] = maximum_positive;
    row_maximum[2 * r + 1] = maximum_negative;
    out.kept[0][a] += kept_positive;
    out.kept[1][a] += kept_negative;
    if (kSupCon) out.positive_logit_sum[a] += positive_logit_sum;
    if (!columns) continue;
    // The column side: without the miner, off the diagonal, it keeps the row side's pairs, whose
    // masked logits are already in the buffers; with it, each column applies its own thresholds.
    if (Mine) {
#pragma omp simd
      for (int64_t c = 0; c < t.cols; ++c) {
        const bool same = column_ids[c] == label;
        const bool keep =
            column_keeps(rule, s[c], same, column_hardest_positive, column_hardest_negative, c);
        const bool positive = keep & Rule::in_positive_group(same);
        const bool negative = keep & !Rule::in_positive_group(same);
        positive_logits[c] = positive ? logits[c] : ninf;
        negative_logits[c] = negative ? logits[c] : ninf;
        column_kept_positive[c] += positive ? 1 : 0;
        column_kept_negative[c] += negative ? 1 : 0;
      }
    } else {
#pragma omp simd
      for (int64_t c = 0; c < t.cols; ++c) {
        const bool positive = Rule::in_positive_group(column_ids[c] == label);
        column_kept_positive[c] += positive ? 1 : 0;
        column_kept_negative[c] += positive ? 0 : 1;
      }
    }
#pragma omp simd
    for (int64_t c = 0; c < t.cols; ++c) {
      const scalar_t maximum_positive = column_maximum_positive[c], maximum_negative = column_maximum_negative[c];
      column_maximum_positive[c] = maximum_positive < positive_logits[c] ? positive_logits[c] : maximum_positive;
      column_maximum_negative[c] = maximum_negative < negative_logits[c] ? negative_logits[c] : maximum_negative;
    }
    if (kSupCon) {
#pragma omp simd
      for (int64_t c = 0; c < t.cols; ++c) column_positive_logit_sum[c] += column_ids[c] == label ? logits[c] : scalar_t(0);
    }
  }

  // Shifted logits (dropped pairs at the cutoff, i.e. exp ~ 0), their exps, then the sums.
  for (int64_t r = 0; r < t.rows; ++r) {
    const TileRow<Mine, scalar_t> row(t, r, ids, thresholds);
    const int32_t label = row.label, self = row.self;
    const scalar_t hardest_positive = row.hardest_positive, hardest_negative = row.hardest_negative;
    const scalar_t* s = row.s;
    scalar_t* row_side = scratch.row_values.data() + r * t.cols;  // logits in, shifted logits out
    scalar_t* column_side = scratch.column_values.data() + r * t.cols;
    const scalar_t maximum_positive = row_maximum[2 * r], maximum_negative = row_maximum[2 * r + 1];
    if (columns) {
#pragma omp simd
      for (int64_t c = 0; c < t.cols; ++c) {
        const bool same = column_ids[c] == label;
        const bool keep =
            column_keeps(rule, s[c], same, column_hardest_positive, column_hardest_negative, c);
        const scalar_t shift_positive = column_maximum_positive[c], shift_negative = column_maximum_negative[c];
        const scalar_t shift = Rule::in_positive_group(same) ? shift_positive : shift_negative;
        column_side[c] = rules::shifted_logit(keep, row_side[c], shift);
      }
    }
#pragma omp simd
    for (int64_t c = 0; c < t.cols; ++c) {
      const bool same = column_ids[c] == label;
      const bool keep = rule.keeps(s[c], same, hardest_positive, hardest_negative) & (column_index[c] != self);
      const scalar_t shift = Rule::in_positive_group(same) ? maximum_positive : maximum_negative;
      row_side[c] = rules::shifted_logit(keep, row_side[c], shift);
    }
  }
  const int64_t entries = t.rows * t.cols;
  exp_in_place(scratch.row_values.data(), entries);
  if (columns) exp_in_place(scratch.column_values.data(), entries);
  for (int64_t r = 0; r < t.rows; ++r) {
    const int64_t a = t.row_begin + r;
    const int32_t label = ids[a];
    const scalar_t* row_side = scratch.row_values.data() + r * t.cols;
    const scalar_t* column_side = scratch.column_values.data() + r * t.cols;
    scalar_t sum_positive = 0, sum_negative = 0;
#pragma omp simd reduction(+ : sum_positive, sum_negative)
    for (int64_t c = 0; c < t.cols; ++c) {
      const bool positive = Rule::in_positive_group(column_ids[c] == label);
      const scalar_t e = row_side[c];
      sum_positive += positive ? e : scalar_t(0);
      sum_negative += positive ? scalar_t(0) : e;
    }
    merge_log_sum_exp(out.maximum[0][a], out.exp_sum[0][a], row_maximum[2 * r], sum_positive);
    merge_log_sum_exp(out.maximum[1][a], out.exp_sum[1][a], row_maximum[2 * r + 1], sum_negative);
    if (!columns) continue;
#pragma omp simd
    for (int64_t c = 0; c < t.cols; ++c) {
      const bool positive = Rule::in_positive_group(column_ids[c] == label);
      const scalar_t e = column_side[c];
      column_sum_positive[c] += positive ? e : scalar_t(0);
      column_sum_negative[c] += positive ? scalar_t(0) : e;
    }
  }
  if (!columns) return;
  for (int64_t c = 0; c < t.cols; ++c) {
    const int64_t j = t.col_begin + c;
    merge_log_sum_exp(out.maximum[0][j], out.exp_sum[0][j], column_maximum_positive[c], column_sum_positive[c]);
    merge_log_sum_exp(out.maximum[1][j], out.exp_sum[1][j], column_maximum_negative[c], column_sum_negative[c]);
    out.kept[0][j] += column_kept_positive[c];
    out.kept[1][j] += column_kept_negative[c];
    out.positive_logit_sum[j] += column_positive_logit_sum[c];
  }
}

// What the grad pass reads per row, as [2][N] / [N] arrays for vector loads along a tile's columns:
// the groups' final maxima, and finish_row's coefficients and SupCon offset multiplied by the row's
// loss weight (exactly 0 for a row of weight 0, even when its coefficients are NaN).
template <typename scalar_t>
struct RowGradients {
  std::vector<scalar_t> maximum, coefficient, positive_offset;
  explicit RowGradients(int64_t n) : maximum(2 * n), coefficient(2 * n), positive_offset(n) {}
};

// M[r][c] = W[a, j] + W[j, a] for one tile, W[a, j] = row_weight_a * d loss_a / d s_aj, into
// scratch.row_values. On a diagonal tile each unordered pair appears twice, each time whole, and
// the anchor's own entry is 0.
template <ContrastiveLoss Loss, bool Mine, typename scalar_t>
void symmetric_pair_weights_tile(const PairRule<Loss, Mine, scalar_t> rule, const Tile<scalar_t>& t, const int32_t* ids,
                                 const Thresholds<scalar_t>* thresholds, const RowGradients<scalar_t>& rows,
                                 TileScratch<scalar_t>& scratch) {
  using Rule = PairRule<Loss, Mine, scalar_t>;
  const int64_t n = static_cast<int64_t>(rows.positive_offset.size());
  const int32_t* column_ids = ids + t.col_begin;
  const int32_t* column_index = scratch.column_index.data();
  const scalar_t* column_hardest_positive = Mine ? thresholds->hardest_positive.data() + t.col_begin : nullptr;
  const scalar_t* column_hardest_negative = Mine ? thresholds->hardest_negative.data() + t.col_begin : nullptr;
  const scalar_t* column_maximum_positive = rows.maximum.data() + t.col_begin;
  const scalar_t* column_maximum_negative = rows.maximum.data() + n + t.col_begin;
  const scalar_t* column_coefficient_positive = rows.coefficient.data() + t.col_begin;
  const scalar_t* column_coefficient_negative = rows.coefficient.data() + n + t.col_begin;
  const scalar_t* column_offset = rows.positive_offset.data() + t.col_begin;
  // One loop per side and step: each stays simple enough for if-conversion.
  for (int64_t r = 0; r < t.rows; ++r) {
    const TileRow<Mine, scalar_t> row(t, r, ids, thresholds);
    const int64_t a = row.a;
    const int32_t label = row.label, self = row.self;
    const scalar_t hardest_positive = row.hardest_positive, hardest_negative = row.hardest_negative;
    const scalar_t maximum_positive = rows.maximum[a], maximum_negative = rows.maximum[n + a];
    const scalar_t* s = row.s;
    scalar_t* row_side = scratch.row_values.data() + r * t.cols;
    scalar_t* column_side = scratch.column_values.data() + r * t.cols;
#pragma omp simd
    for (int64_t c = 0; c < t.cols; ++c) {
      const bool same = column_ids[c] == label;
      const bool keep = rule.keeps(s[c], same, hardest_positive, hardest_negative) & (column_index[c] != self);
      const scalar_t shift = Rule::in_positive_group(same) ? maximum_positive : maximum_negative;
      row_side[c] = rules::shifted_logit(keep, rule.logit(s[c], same), shift);
    }
#pragma omp simd
    for (int64_t c = 0; c < t.cols; ++c) {
      const bool same = column_ids[c] == label;
      const bool keep =
          column_keeps(rule, s[c], same, column_hardest_positive, column_hardest_negative, c) & (column_index[c] != self);
      const scalar_t shift_positive = column_maximum_positive[c], shift_negative = column_maximum_negative[c];
      const scalar_t shift = Rule::in_positive_group(same) ? shift_positive : shift_negative;
      column_side[c] = rules::shifted_logit(keep, rule.logit(s[c], same), shift);
    }
  }
  const int64_t entries = t.rows * t.cols;
  exp_in_place(scratch.row_values.data(), entries);
  exp_in_place(scratch.column_values.data(), entries);
  for (int64_t r = 0; r < t.rows; ++r) {
    const TileRow<Mine, scalar_t> row(t, r, ids, thresholds);
    const int64_t a = row.a;
    const int32_t label = row.label, self = row.self;
    const scalar_t hardest_positive = row.hardest_positive, hardest_negative = row.hardest_negative;
    const scalar_t coefficient_positive = rows.coefficient[a], coefficient_negative = rows.coefficient[n + a];
    const scalar_t offset = rows.positive_offset[a];
    const scalar_t* s = row.s;
    scalar_t* row_side = scratch.row_values.data() + r * t.cols;  // exps in, M out
    const scalar_t* column_side = scratch.column_values.data() + r * t.cols;
#pragma omp simd
    for (int64_t c = 0; c < t.cols; ++c) {
      const bool same = column_ids[c] == label;
      const bool other = column_index[c] != self;
      const bool keep = rule.keeps(s[c], same, hardest_positive, hardest_negative) & other;
      const scalar_t coefficient = Rule::in_positive_group(same) ? coefficient_positive : coefficient_negative;
      // SupCon's offset lands on every positive pair from both of its rows (the column's below).
      row_side[c] = rules::pair_gradient<Loss>(keep, same, other, coefficient, row_side[c], rule.slope(s[c], same), offset);
    }
#pragma omp simd
    for (int64_t c = 0; c < t.cols; ++c) {
      const bool same = column_ids[c] == label;
      const bool other = column_index[c] != self;
      const bool keep =
          column_keeps(rule, s[c], same, column_hardest_positive, column_hardest_negative, c) & other;
      const scalar_t positive_coefficient = column_coefficient_positive[c], negative_coefficient = column_coefficient_negative[c];
      const scalar_t coefficient = Rule::in_positive_group(same) ? positive_coefficient : negative_coefficient;
      const scalar_t column_shift = column_offset[c];
      row_side[c] += rules::pair_gradient<Loss>(keep, same, other, coefficient, column_side[c], rule.slope(s[c], same),
                                                column_shift);
    }
  }
}

}  // namespace contrastive_tiles
}  // namespace cpu
}  // namespace embedplug
