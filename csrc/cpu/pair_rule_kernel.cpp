// The fused interpreter of a pair rule on the CPU: any label-aware pair loss embedplug.pair_rules
// describes, per anchor, without an N x N matrix.
//
// Positive and negative pairs are computed where each is cheapest:
//   - positive pairs within their class: per class, blocks of its members against all of them (one
//     small GEMM each, sum of squared class sizes x D multiply-adds, nothing for P x K batches);
//   - negative pairs over the upper-triangular Gram tiles of the whole batch (half a GEMM per pass;
//     each unordered pair feeds both of its rows, the column side through per-column arrays).
// Passes, each reading only what is final:
//   classes  the hardest positive per anchor (the negatives' mining filter; only with one);
//   tiles    the negatives: hardest negative (the positives' filter), kept count, online
//            log-sum-exp of the logits, term sums and counts;
//   classes  the positives, the same, then the versus terms against the anchor's final negatives;
//   finish   per anchor (pair_rule::finish_anchor);
// and for the gradient (per stream, weights w_a): the classes pass writes each positive pair's weight
// on its Gram entry and the versus terms' coefficients of the negatives' softmax, then the tiles pass
// writes M = W + W^T over the negatives; both meet the rows in GEMMs. Multiply-adds: N^2 D / 2 for
// the forward, N^2 D / 2 + N^2 D for the gradient, as the bespoke label-aware kernels this op replaced.
// Memory: per thread one tile and its buffers, O(N) states, one N x D accumulator.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/label_tiles.h"
#include "cpu/pairwise_tiles.h"
#include "op_input_checks.h"
#include "pair_rule_host.h"
#include "pair_rule_rules.h"

namespace embedplug {
namespace cpu {
namespace {

using namespace pair_rule;

template <typename T>
constexpr T infinity() {
  return std::numeric_limits<T>::infinity();
}

// A batch of at most this many pairs gets its Gram matrix as one product, the one PML computes: a
// BLAS entry can round differently in a tile-shaped product, and float32 parity with PML's
// distances of close rows needs the same bits. 16 MiB in float32; larger batches run tiles.
constexpr int64_t kSingleProductEntries = int64_t(1) << 22;

// The Gram source of the passes: the one product, or tiles computed on the fly.
struct GramSource {
  const RuleOperands* operands;
  at::Tensor full;  // [N, N] or undefined

  GramSource(const RuleOperands& ops) : operands(&ops) {
    const int64_t n = ops.unit.size(0);
    if (n * n <= kSingleProductEntries) full = at::mm(ops.left, ops.right.t());
  }
};

// Work items of the class passes: a block of at most kClassBlock members of one class, against all
// members of that class.
constexpr int64_t kClassBlock = 128;

struct ClassBlock {
  int64_t class_begin, class_end;  // into ClassMembers::members: the class
  int64_t row_begin, row_end;      // the block's rows, a sub-range of the class
};

std::vector<ClassBlock> class_blocks(const ClassMembers& classes, int64_t n) {
  std::vector<ClassBlock> blocks;
  for (int64_t begin = 0; begin < n;) {
    const int64_t end = classes.class_end[classes.members[begin]];
    if (end - begin >= 2) {
      for (int64_t r = begin; r < end; r += kClassBlock) blocks.push_back({begin, end, r, std::min(r + kClassBlock, end)});
    }
    begin = end;
  }
  return blocks;
}

// One class block's Gram entries: rows[r] against cols[c] (sample indices), row-major.
template <typename T>
struct ClassGram {
  std::vector<int64_t> rows, cols;
  std::vector<T> values;  // [rows, cols]
  const T* g(int64_t r) const { return values.data() + r * static_cast<int64_t>(cols.size()); }
};

// Classes of at most this many members get their Gram entries (and gradient) from plain loops: a
// P x K batch has thousands of classes, and an ATen call per class costs more than its arithmetic.
constexpr int64_t kDirectClassMembers = 64;

template <typename T>
T dot(const T* a, const T* b, int64_t dim) {
  T sum = T(0);
#pragma omp simd reduction(+ : sum)
  for (int64_t d = 0; d < dim; ++d) sum += a[d] * b[d];
  return sum;
}

template <typename T>
ClassGram<T> class_gram(const GramSource& source, const ClassMembers& classes, const ClassBlock& block) {
  const RuleOperands& operands = *source.operands;
  ClassGram<T> out;
  out.rows.assign(classes.members.begin() + block.row_begin, classes.members.begin() + block.row_end);
  out.cols.assign(classes.members.begin() + block.class_begin, classes.members.begin() + block.class_end);
  const int64_t rows = static_cast<int64_t>(out.rows.size()), cols = static_cast<int64_t>(out.cols.size());
  out.values.resize(static_cast<size_t>(rows * cols));
  if (source.full.defined()) {
    const int64_t n = source.full.size(0);
    const T* full = source.full.data_ptr<T>();
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) out.values[r * cols + c] = full[out.rows[r] * n + out.cols[c]];
    }
  } else if (cols <= kDirectClassMembers) {
    const int64_t dim = operands.left.size(1);
    const T* left = operands.left.data_ptr<T>();
    const T* right = operands.right.data_ptr<T>();
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        out.values[r * cols + c] = dot(left + out.rows[r] * dim, right + out.cols[c] * dim, dim);
      }
    }
  } else {
    const auto index_options = at::TensorOptions().dtype(at::kLong);
    const auto row_index = at::from_blob(out.rows.data(), {rows}, index_options);
    const auto col_index = at::from_blob(out.cols.data(), {cols}, index_options);
    auto gram = at::from_blob(out.values.data(), {rows, cols}, operands.left.options());
    at::mm_out(gram, operands.left.index_select(0, row_index), operands.right.index_select(0, col_index).t());
  }
  return out;
}

template <typename Body>
void for_each_class_block(const std::vector<ClassBlock>& blocks, Body&& body) {
  at::parallel_for(0, static_cast<int64_t>(blocks.size()), 1, [&](int64_t begin, int64_t end) {
    const int thread_id = at::get_thread_num();
    for (int64_t b = begin; b < end; ++b) body(blocks[b], thread_id);
  });
}

// The negatives' tile passes read a tile of rows[I] . rows[J]^T through this view.
template <typename T>
struct TileView {
  const T* gram;
  int64_t row_begin, rows, col_begin, cols;
  bool diagonal;
};

template <typename T, typename Epilogue>
void for_each_tile(const GramSource& source, int64_t tile, Epilogue&& epilogue) {
  const RuleOperands& operands = *source.operands;
  for_each_gram_tile_of<T>(operands.left, operands.right, source.full, tile,
                           [&](const TilePair& pair, const T* gram, int thread_id) {
                             epilogue(TileView<T>{gram, pair.row_begin, pair.row_end - pair.row_begin, pair.col_begin,
                                                  pair.col_end - pair.col_begin, pair.on_diagonal()},
                                      thread_id);
                           });
}

// Per-thread scratch of the tile passes: per-pair values, keep flags, exps, column accumulators
// (struct of arrays, so that the column loops vectorise).
template <typename T>
struct TileScratch {
  std::vector<T> s, x, row_exp, column_exp, m, slope, angled;
  // Keep flags as int32: as wide as a float lane, so the selects on them vectorise cleanly.
  std::vector<int32_t> keep_row, keep_column;
  std::vector<int32_t> column_kept, column_positive_terms;
  std::vector<uint8_t> column_nan;
  std::vector<T> column_maximum, column_exp_sum, column_term_sum, column_hardest;
  std::vector<T> row_maximum;

  void reserve(int64_t tile) {
    const size_t entries = static_cast<size_t>(tile * tile), line = static_cast<size_t>(tile);
    for (auto* buffer : {&s, &x, &row_exp, &column_exp, &m}) buffer->resize(entries);
    for (auto* buffer : {&slope, &angled, &column_maximum, &column_exp_sum, &column_term_sum, &column_hardest,
                         &row_maximum}) {
      buffer->resize(line);
    }
    keep_row.resize(entries);
    keep_column.resize(entries);
    column_kept.resize(line);
    column_positive_terms.resize(line);
    column_nan.resize(line);
  }
};

// A side's per-pair steps (pair_rule_rules.h) as loops over one tile row: the rule's switches are
// taken once per row, so that each loop is branch-free and vectorises. They compute what
// measure_of, logit and pair_slope compute, in the same order.
template <typename T>
struct RowSteps {
  const SideRule<T>& side;

  // The row's measures: the Gram row itself for similarities (no copy), else computed into `s`.
  const T* measures(const T* g, T* s, int64_t cols) const {
    switch (side.measure) {
      case Measure::kEuclidean:
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c) s[c] = measure_of(Measure::kEuclidean, g[c]);
        return s;
      case Measure::kSquaredEuclidean:
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c) s[c] = measure_of(Measure::kSquaredEuclidean, g[c]);
        return s;
      default:
        return g;
    }
  }

  // Whether pair_slope is one number for every pair (a similarity, no weight, no angle).
  bool constant_slope() const { return !side.has_weight && !side.has_angle && !is_distance(side.measure); }

  // The weight factor (scale, or scale times the self-paced weight) into `out`.
  void factors(const T* s, T* out, int64_t cols) const {
    const T scale = side.scale, optimum = side.weight_optimum;
    if (!side.has_weight) {
      std::fill(out, out + cols, scale);
    } else if (side.weight_increasing) {
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) out[c] = scale * self_paced(s[c], optimum, true);
    } else {
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) out[c] = scale * self_paced(s[c], optimum, false);
    }
  }

  void logits(const T* s, T* x, T* angled_buffer, int64_t cols) const {
    const T* a = s;
    if (side.has_angle) {
      for (int64_t c = 0; c < cols; ++c) angled_buffer[c] = angled(s[c], side.angle_offset);
      a = angled_buffer;
    }
    const T shift = side.shift;
    if (side.has_weight) {
      factors(s, x, cols);
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) x[c] = affine_logit(x[c], a[c], shift);
      if (side.has_temperature) {
        const T temperature = side.temperature;
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c) x[c] = x[c] / temperature;
      }
      return;
    }
    const T scale = side.scale;
    if (side.has_temperature) {
      const T temperature = side.temperature;
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) x[c] = affine_logit(scale, a[c], shift) / temperature;
    } else {
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) x[c] = affine_logit(scale, a[c], shift);
    }
  }

  void slopes(const T* s, T* out, int64_t cols) const {
    factors(s, out, cols);
    if (side.has_temperature) {
      const T temperature = side.temperature;
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) out[c] = out[c] / temperature;
    }
    if (side.has_angle) {
      for (int64_t c = 0; c < cols; ++c) out[c] = out[c] * angled_slope(s[c], side.angle_offset);
    }
    if (side.measure == Measure::kEuclidean) {
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) out[c] = out[c] * gram_slope(Measure::kEuclidean, s[c]);
    } else if (side.measure == Measure::kSquaredEuclidean) {
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) out[c] = out[c] * gram_slope(Measure::kSquaredEuclidean, s[c]);
    }
  }

  // Which of a row's pairs are kept negatives, for the row's anchor and for each column's.
  void keeps_negatives(const int32_t* column_ids, int32_t label, const T* s, T row_threshold,
                       const T* column_thresholds, bool columns, int32_t* keep_row, int32_t* keep_column,
                       int64_t cols) const {
    if (!side.has_filter) {
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) keep_row[c] = keep_column[c] = column_ids[c] != label;
      return;
    }
    const T sign = is_distance(side.measure) ? T(-1) : T(1), epsilon = side.epsilon;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) {
      const bool negative = column_ids[c] != label;
      const T close = sign * s[c];
      keep_row[c] = negative & kept_negative(close, epsilon, row_threshold);
      keep_column[c] = negative & columns & kept_negative(close, epsilon, column_thresholds[c]);
    }
  }
};

// The per-anchor states the forward passes build.
template <typename T>
struct AnchorStates {
  std::vector<SideState<T>> side[2];
  std::vector<T> hardest_positive, hardest_negative;  // closeness, before any filter (NaN propagates)

  explicit AnchorStates(int64_t n) : hardest_positive(n, infinity<T>()), hardest_negative(n, -infinity<T>()) {
    side[0].resize(n);
    side[1].resize(n);
  }
};

// What each pass needs of a rule, decided once.
template <typename T>
struct Needs {
  bool hardest_positive, hardest_negative, negative_lse, negative_terms, versus;

  explicit Needs(const Rule<T>& rule) {
    const SideRule<T>& negatives = rule.side[kNegatives];
    versus = rule.side[kPositives].term == Term::kVersus;
    hardest_positive = negatives.has_filter;
    hardest_negative = rule.side[kPositives].has_filter;
    negative_lse = versus || negatives.reduction == Reduction::kLse || negatives.reduction == Reduction::kLseAddOne;
    negative_terms = !(negatives.reduction == Reduction::kLse || negatives.reduction == Reduction::kLseAddOne);
  }
};

// ---- classes: hardest positive ---------------------------------------------------------------------

template <typename T>
void hardest_positives(const Rule<T>& rule, const GramSource& operands, const ClassMembers& classes,
                       const std::vector<ClassBlock>& blocks, AnchorStates<T>& states) {
  const Measure measure = rule.side[kNegatives].measure;
  for_each_class_block(blocks, [&](const ClassBlock& block, int) {
    const ClassGram<T> gram = class_gram<T>(operands, classes, block);
    for (size_t r = 0; r < gram.rows.size(); ++r) {
      const int64_t a = gram.rows[r];
      const T* g = gram.g(static_cast<int64_t>(r));
      T hardest = infinity<T>();
      for (size_t c = 0; c < gram.cols.size(); ++c) {
        if (gram.cols[c] == a) continue;
        hardest = nan_min(hardest, closeness(measure, measure_of(measure, g[c])));
      }
      states.hardest_positive[a] = hardest;
    }
  });
}

// ---- tiles: negatives forward ----------------------------------------------------------------------

template <typename T>
struct NegativeTotals {
  std::vector<SideState<T>> state;
  std::vector<T> hardest;
  int64_t near_duplicates = 0;
  explicit NegativeTotals(int64_t n) : state(n), hardest(n, -infinity<T>()) {}
};

// The negatives' forward over one tile: kept counts, logit maxima and exp sums (online, merged
// tile by tile), term sums and counts, and the hardest negative before any filter, for the rows
// and (off the diagonal) the columns.
template <typename T>
void negatives_tile(const Rule<T>& rule, const Needs<T>& needs, const TileView<T>& t, const int32_t* ids,
                    const T* hardest_positive, const T* squared_norms, TileScratch<T>& sc, NegativeTotals<T>& out) {
  const SideRule<T>& side = rule.side[kNegatives];
  const RowSteps<T> steps{side};
  const bool columns = !t.diagonal;
  const int64_t cols = t.cols;
  const int32_t* column_ids = ids + t.col_begin;
  const T ninf = -infinity<T>();
  const T sign = is_distance(side.measure) ? T(-1) : T(1);
  const bool hinge = side.term == Term::kHinge;
  if (squared_norms != nullptr) {
    // Every pair of the batch passes through the tiles once (twice on a diagonal tile).
    int64_t near = 0;
    for (int64_t r = 0; r < t.rows; ++r) {
      const T* g = t.gram + r * cols;
      const T squared_a = squared_norms[t.row_begin + r];
      const T* squared_columns = squared_norms + t.col_begin;
      const int64_t self = t.diagonal ? r : -1;
#pragma omp simd reduction(+ : near)
      for (int64_t c = 0; c < cols; ++c) near += (c != self && near_duplicate(g[c], squared_a, squared_columns[c])) ? 1 : 0;
    }
    out.near_duplicates += near;
  }
  std::fill(sc.column_kept.begin(), sc.column_kept.begin() + cols, 0);
  std::fill(sc.column_positive_terms.begin(), sc.column_positive_terms.begin() + cols, 0);
  std::fill(sc.column_nan.begin(), sc.column_nan.begin() + cols, 0);
  std::fill(sc.column_maximum.begin(), sc.column_maximum.begin() + cols, ninf);
  std::fill(sc.column_exp_sum.begin(), sc.column_exp_sum.begin() + cols, T(0));
  std::fill(sc.column_term_sum.begin(), sc.column_term_sum.begin() + cols, T(0));
  std::fill(sc.column_hardest.begin(), sc.column_hardest.begin() + cols, ninf);
  int32_t* column_kept = sc.column_kept.data();
  int32_t* column_positive_terms = sc.column_positive_terms.data();
  uint8_t* column_nan = sc.column_nan.data();
  T* column_maximum = sc.column_maximum.data();
  T* column_term_sum = sc.column_term_sum.data();
  T* column_hardest = sc.column_hardest.data();
  const T* column_thresholds = needs.hardest_positive ? hardest_positive + t.col_begin : nullptr;
  for (int64_t r = 0; r < t.rows; ++r) {
    const int64_t a = t.row_begin + r;
    const int32_t label = ids[a];
    T* x = sc.x.data() + r * cols;
    int32_t* keep_row = sc.keep_row.data() + r * cols;
    int32_t* keep_column = sc.keep_column.data() + r * cols;
    const T* s = steps.measures(t.gram + r * cols, sc.s.data() + r * cols, cols);
    steps.logits(s, x, sc.angled.data(), cols);
    steps.keeps_negatives(column_ids, label, s, needs.hardest_positive ? hardest_positive[a] : T(0), column_thresholds,
                          columns, keep_row, keep_column, cols);
    if (needs.hardest_negative) {
      T hardest = ninf;
      int32_t saw_nan = 0;
#pragma omp simd reduction(max : hardest) reduction(| : saw_nan)
      for (int64_t c = 0; c < cols; ++c) {
        const bool negative = column_ids[c] != label;
        const T close = sign * s[c];
        hardest = std::max(hardest, negative ? close : ninf);
        saw_nan |= (negative & (close != close)) ? 1 : 0;
      }
      out.hardest[a] = nan_max(out.hardest[a], saw_nan ? std::numeric_limits<T>::quiet_NaN() : hardest);
      if (columns) {
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c) {
          const bool negative = column_ids[c] != label;
          const T close = sign * s[c];
          column_hardest[c] = std::max(column_hardest[c], negative ? close : ninf);
          column_nan[c] |= (negative & (close != close)) ? 1 : 0;
        }
      }
    }
    int32_t kept = 0, positive_terms = 0;
    T maximum = ninf, term_sum = T(0);
#pragma omp simd reduction(+ : kept) reduction(max : maximum)
    for (int64_t c = 0; c < cols; ++c) {
      kept += keep_row[c];
      maximum = std::max(maximum, keep_row[c] ? x[c] : ninf);
    }
    if (needs.negative_terms) {
#pragma omp simd reduction(+ : term_sum, positive_terms)
      for (int64_t c = 0; c < cols; ++c) {
        const T term = hinge ? term_of(Term::kHinge, x[c]) : term_of(Term::kLogit, x[c]);
        term_sum += keep_row[c] ? term : T(0);
        positive_terms += (keep_row[c] & (term > T(0))) ? 1 : 0;
      }
    }
    SideState<T>& state = out.state[a];
    state.kept += kept;
    state.term_sum += term_sum;
    state.positive_terms += positive_terms;
    sc.row_maximum[r] = maximum;
    if (!columns) continue;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) {
      column_kept[c] += keep_column[c];
      column_maximum[c] = std::max(column_maximum[c], keep_column[c] ? x[c] : ninf);
    }
    if (needs.negative_terms) {
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) {
        const T term = hinge ? term_of(Term::kHinge, x[c]) : term_of(Term::kLogit, x[c]);
        column_term_sum[c] += keep_column[c] ? term : T(0);
        column_positive_terms[c] += (keep_column[c] & (term > T(0))) ? 1 : 0;
      }
    }
  }
  if (needs.negative_lse) {
    const T cutoff = infonce::exp_underflow_cutoff<T>();
    for (int64_t r = 0; r < t.rows; ++r) {
      const T* x = sc.x.data() + r * cols;
      const int32_t* keep_row = sc.keep_row.data() + r * cols;
      T* row_exp = sc.row_exp.data() + r * cols;
      const T row_shift = sc.row_maximum[r];
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) {
        const T v = shifted(x[c], row_shift);  // computed unconditionally: the select then vectorises
        row_exp[c] = keep_row[c] ? v : cutoff;
      }
      if (!columns) continue;
      const int32_t* keep_column = sc.keep_column.data() + r * cols;
      T* column_exp = sc.column_exp.data() + r * cols;
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) {
        const T v = shifted(x[c], column_maximum[c]);
        column_exp[c] = keep_column[c] ? v : cutoff;
      }
    }
    exp_in_place(sc.row_exp.data(), t.rows * cols);
    if (columns) exp_in_place(sc.column_exp.data(), t.rows * cols);
    T* column_exp_sum = sc.column_exp_sum.data();
    for (int64_t r = 0; r < t.rows; ++r) {
      const int64_t a = t.row_begin + r;
      const T* row_exp = sc.row_exp.data() + r * cols;
      const int32_t* keep_row = sc.keep_row.data() + r * cols;
      T sum = T(0);
#pragma omp simd reduction(+ : sum)
      for (int64_t c = 0; c < cols; ++c) sum += keep_row[c] ? row_exp[c] : T(0);
      infonce::RunningLogSumExp<T> state = out.state[a].lse();
      state.merge(infonce::RunningLogSumExp<T>::of(sc.row_maximum[r], sum));
      out.state[a].maximum = state.maximum;
      out.state[a].exp_sum = state.sum;
      if (!columns) continue;
      const T* column_exp = sc.column_exp.data() + r * cols;
      const int32_t* keep_column = sc.keep_column.data() + r * cols;
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) column_exp_sum[c] += keep_column[c] ? column_exp[c] : T(0);
    }
  } else {
    // Without an lse the maximum still tells the gradient pass where a row's logits stop.
    for (int64_t r = 0; r < t.rows; ++r) {
      SideState<T>& state = out.state[t.row_begin + r];
      state.maximum = std::max(state.maximum, sc.row_maximum[r]);
    }
  }
  if (!columns) return;
  for (int64_t c = 0; c < cols; ++c) {
    const int64_t j = t.col_begin + c;
    SideState<T> column;
    column.kept = sc.column_kept[c];
    column.maximum = sc.column_maximum[c];
    column.exp_sum = needs.negative_lse ? sc.column_exp_sum[c] : T(0);
    column.term_sum = sc.column_term_sum[c];
    column.positive_terms = sc.column_positive_terms[c];
    out.state[j].merge(column);
    const T hardest = sc.column_nan[c] ? std::numeric_limits<T>::quiet_NaN() : sc.column_hardest[c];
    out.hardest[j] = nan_max(out.hardest[j], hardest);
  }
}

// ---- classes: positives forward --------------------------------------------------------------------

// Per row of a class block: the kept positives' measures and logits (keep flag as NaN-free bool).
template <typename T>
struct PositiveRow {
  std::vector<T> s, x;
  std::vector<uint8_t> keep;
};

template <typename T>
void positive_row(const Rule<T>& rule, const ClassGram<T>& gram, int64_t r, T hardest_negative, PositiveRow<T>& row) {
  const SideRule<T>& side = rule.side[kPositives];
  const int64_t a = gram.rows[r];
  const size_t k = gram.cols.size();
  row.s.resize(k);
  row.x.resize(k);
  row.keep.resize(k);
  const T* g = gram.g(r);
  for (size_t c = 0; c < k; ++c) {
    const T s = measure_of(side.measure, g[c]);
    row.s[c] = s;
    row.keep[c] = gram.cols[c] != a && keeps(side, kPositives, closeness(side.measure, s), hardest_negative);
    row.x[c] = row.keep[c] ? logit(side, s) : T(0);
  }
}

template <typename T>
SideState<T> row_lse_state(const PositiveRow<T>& row) {
  SideState<T> state;
  for (size_t c = 0; c < row.x.size(); ++c) {
    if (!row.keep[c]) continue;
    ++state.kept;
    if (row.x[c] > state.maximum) state.maximum = row.x[c];
  }
  for (size_t c = 0; c < row.x.size(); ++c) {
    if (row.keep[c]) state.exp_sum += rule_exp(row.x[c] - state.maximum);
  }
  return state;
}

template <typename T>
void positives_forward(const Rule<T>& rule, const Needs<T>& needs, const GramSource& operands,
                       const ClassMembers& classes, const std::vector<ClassBlock>& blocks, AnchorStates<T>& states) {
  const SideRule<T>& side = rule.side[kPositives];
  const int num_threads = std::max(at::get_num_threads(), 1);
  std::vector<PositiveRow<T>> rows(num_threads);
  for_each_class_block(blocks, [&](const ClassBlock& block, int thread_id) {
    const ClassGram<T> gram = class_gram<T>(operands, classes, block);
    PositiveRow<T>& row = rows[thread_id];
    for (size_t r = 0; r < gram.rows.size(); ++r) {
      const int64_t a = gram.rows[r];
      positive_row(rule, gram, static_cast<int64_t>(r), states.hardest_negative[a], row);
      SideState<T> state = row_lse_state(row);
      const SideState<T>& negatives = states.side[kNegatives][a];
      if (needs.versus) {
        VersusReferenceOf<T> ref{};
        own_reference(rule, state, negatives, ref);
        const int64_t members = state.kept + negatives.kept;
        for (size_t c = 0; c < gram.cols.size(); ++c) {
          if (!row.keep[c]) continue;
          if (rule.versus_partner) partner_reference(states.side[kNegatives][gram.cols[c]], ref);
          const VersusTerm<T> term = versus_term(rule, ref, row.x[c], members);
          state.term_sum += term.term;
          state.positive_terms += term.positive ? 1 : 0;
        }
      } else {
        for (size_t c = 0; c < gram.cols.size(); ++c) {
          if (!row.keep[c]) continue;
          const T term = term_of(side.term, row.x[c]);
          state.term_sum += term;
          state.positive_terms += term > T(0) ? 1 : 0;
        }
      }
      states.side[kPositives][a] = state;
    }
  });
}

// ---- the forward -----------------------------------------------------------------------------------

template <typename T>
struct Forward {
  Rule<T> rule;
  RuleOperands operands;
  GramSource source;
  LabelClasses labels;
  ClassMembers classes;
  std::vector<ClassBlock> blocks;
  AnchorStates<T> states;
  std::vector<AnchorResult<T>> results;
  int64_t tile;
  bool non_finite;
  int64_t near_duplicates = 0;

  Forward(const Rule<T>& rule_, const at::Tensor& embeddings, const int64_t* label_ptr)
      : rule(rule_),
        operands(rule_operands(embeddings, rule_.side[0].normalize, is_distance(rule_.side[0].measure))),
        source(operands),
        labels(label_ptr, embeddings.size(0)),
        classes(label_ptr, embeddings.size(0)),
        blocks(class_blocks(classes, embeddings.size(0))),
        states(embeddings.size(0)),
        results(embeddings.size(0)),
        tile(label_tile_size(embeddings.size(0))),
        non_finite(!operands.x.isfinite().all().item<bool>()) {
    const int64_t n = embeddings.size(0);
    const Needs<T> needs(rule);
    if (needs.hardest_positive) hardest_positives(rule, source, classes, blocks, states);
    const int num_threads = std::max(at::get_num_threads(), 1);
    std::vector<TileScratch<T>> scratch(num_threads);
    for (auto& own : scratch) own.reserve(tile);
    std::vector<NegativeTotals<T>> totals(num_threads, NegativeTotals<T>(n));
    const int32_t* ids = labels.ids.data();
    at::Tensor squared;
    if (operands.distance) squared = operands.left.select(1, operands.unit.size(1)).contiguous();
    const T* squared_norms = operands.distance ? squared.data_ptr<T>() : nullptr;
    for_each_tile<T>(source, tile, [&](const TileView<T>& t, int thread_id) {
      negatives_tile(rule, needs, t, ids, states.hardest_positive.data(), squared_norms, scratch[thread_id],
                     totals[thread_id]);
    });
    for (const auto& total : totals) near_duplicates += total.near_duplicates;
    at::parallel_for(0, n, 2048, [&](int64_t begin, int64_t end) {
      for (int64_t a = begin; a < end; ++a) {
        SideState<T> state = totals[0].state[a];
        T hardest = totals[0].hardest[a];
        for (size_t t = 1; t < totals.size(); ++t) {
          state.merge(totals[t].state[a]);
          hardest = nan_max(hardest, totals[t].hardest[a]);
        }
        states.side[kNegatives][a] = state;
        states.hardest_negative[a] = hardest;
      }
    });
    positives_forward(rule, needs, source, classes, blocks, states);
    for (int64_t a = 0; a < n; ++a) results[a] = finish_anchor(rule, states.side[kPositives][a], states.side[kNegatives][a]);
  }
};

// ---- the gradient ----------------------------------------------------------------------------------

// Per anchor, the coefficients of both sides for weights w (per stream).
template <typename T>
struct Coefficients {
  std::vector<PairCoefficients<T>> side[2];
};

// The negatives' coefficients as arrays, for vector loads along a tile's columns.
template <typename T>
struct CoefficientArrays {
  std::vector<T> shift, exp_coefficient, term_coefficient;
  explicit CoefficientArrays(const std::vector<PairCoefficients<T>>& k)
      : shift(k.size()), exp_coefficient(k.size()), term_coefficient(k.size()) {
    for (size_t a = 0; a < k.size(); ++a) {
      shift[a] = k[a].shift;
      exp_coefficient[a] = k[a].exp_coefficient;
      term_coefficient[a] = k[a].term_coefficient;
    }
  }
};

// M[r][c] = W[a, j] + W[j, a] over one tile's negative pairs, W the weight of a pair's Gram entry
// in its anchor's loss (gram_weight); on a diagonal tile each unordered pair appears twice, each
// time whole.
template <typename T>
void negatives_gradient_tile(const Rule<T>& rule, const TileView<T>& t, const int32_t* ids, const T* hardest_positive,
                             const CoefficientArrays<T>& k, bool exps, TileScratch<T>& sc) {
  const SideRule<T>& side = rule.side[kNegatives];
  const RowSteps<T> steps{side};
  const int64_t cols = t.cols;
  const int32_t* column_ids = ids + t.col_begin;
  const T* column_thresholds = side.has_filter ? hardest_positive + t.col_begin : nullptr;
  const T* column_shift = k.shift.data() + t.col_begin;
  const T* column_exp_coefficient = k.exp_coefficient.data() + t.col_begin;
  const T* column_term_coefficient = k.term_coefficient.data() + t.col_begin;
  const T cutoff = infonce::exp_underflow_cutoff<T>();
  const bool hinge = side.term == Term::kHinge;
  const bool constant_slope = steps.constant_slope();
  const T single_slope = constant_slope ? pair_slope(side, T(0)) : T(0);
  for (int64_t r = 0; r < t.rows; ++r) {
    const int64_t a = t.row_begin + r;
    T* x = sc.x.data() + r * cols;
    int32_t* keep_row = sc.keep_row.data() + r * cols;
    int32_t* keep_column = sc.keep_column.data() + r * cols;
    const T* s = steps.measures(t.gram + r * cols, sc.s.data() + r * cols, cols);
    steps.logits(s, x, sc.angled.data(), cols);
    steps.keeps_negatives(column_ids, ids[a], s, side.has_filter ? hardest_positive[a] : T(0), column_thresholds, true,
                          keep_row, keep_column, cols);
    if (!exps) continue;
    T* row_exp = sc.row_exp.data() + r * cols;
    T* column_exp = sc.column_exp.data() + r * cols;
    const T row_shift = k.shift[a];
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) {
      const T row_value = shifted(x[c], row_shift), column_value = shifted(x[c], column_shift[c]);
      row_exp[c] = keep_row[c] ? row_value : cutoff;
      column_exp[c] = keep_column[c] ? column_value : cutoff;
    }
  }
  if (exps) {
    exp_in_place(sc.row_exp.data(), t.rows * cols);
    exp_in_place(sc.column_exp.data(), t.rows * cols);
  }
  for (int64_t r = 0; r < t.rows; ++r) {
    const int64_t a = t.row_begin + r;
    const T* s = is_distance(side.measure) ? sc.s.data() + r * cols : t.gram + r * cols;
    const T* x = sc.x.data() + r * cols;
    const int32_t* keep_row = sc.keep_row.data() + r * cols;
    const int32_t* keep_column = sc.keep_column.data() + r * cols;
    const T* row_exp = sc.row_exp.data() + r * cols;
    const T* column_exp = sc.column_exp.data() + r * cols;
    T* slope = sc.slope.data();
    T* m = sc.m.data() + r * cols;
    if (!constant_slope) steps.slopes(s, slope, cols);
    PairCoefficients<T> row_k;
    row_k.shift = k.shift[a];
    row_k.exp_coefficient = k.exp_coefficient[a];
    row_k.term_coefficient = k.term_coefficient[a];
    // Without exps every exp coefficient is 0 and pair_logit_gradient ignores the (stale) exp.
    auto weights = [&](auto term_constant, auto constant_constant) {
      constexpr Term term = decltype(term_constant)::value;
      constexpr bool kConstantSlope = decltype(constant_constant)::value;
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) {
        PairCoefficients<T> column_k;
        column_k.shift = column_shift[c];
        column_k.exp_coefficient = column_exp_coefficient[c];
        column_k.term_coefficient = column_term_coefficient[c];
        // Computed unconditionally and then selected, so that the loop if-converts and vectorises.
        const T row_value = pair_logit_gradient(row_k, term, x[c], row_exp[c]);
        const T column_value = pair_logit_gradient(column_k, term, x[c], column_exp[c]);
        const T row_gradient = keep_row[c] ? row_value : T(0);
        const T column_gradient = keep_column[c] ? column_value : T(0);
        // gram_weight's product, with pair_slope computed by the row steps (or one number).
        const T pair_slope_value = kConstantSlope ? single_slope : slope[c];
        const T row_weight = row_gradient * pair_slope_value, column_weight = column_gradient * pair_slope_value;
        m[c] = (row_gradient == T(0) ? T(0) : row_weight) + (column_gradient == T(0) ? T(0) : column_weight);
      }
    };
    using Hinge = std::integral_constant<Term, Term::kHinge>;
    using Logit = std::integral_constant<Term, Term::kLogit>;
    if (hinge) {
      constant_slope ? weights(Hinge{}, std::true_type{}) : weights(Hinge{}, std::false_type{});
    } else {
      constant_slope ? weights(Logit{}, std::true_type{}) : weights(Logit{}, std::false_type{});
    }
  }
}

template <typename T>
at::Tensor gradient(const Forward<T>& f, const std::vector<T> weights[2]) {
  const Rule<T>& rule = f.rule;
  const int64_t n = f.operands.x.size(0), dim = f.operands.x.size(1);
  const Needs<T> needs(rule);
  const auto options = f.operands.unit.options();
  const int num_threads = std::max(at::get_num_threads(), 1);
  std::vector<at::Tensor> pair_totals(num_threads), self_totals(num_threads);
  auto accumulators = [&](int thread_id) -> std::pair<at::Tensor&, at::Tensor&> {
    if (!pair_totals[thread_id].defined()) {
      pair_totals[thread_id] = at::zeros({n, dim}, options);
      self_totals[thread_id] = at::zeros({n}, options);
    }
    return {pair_totals[thread_id], self_totals[thread_id]};
  };

  // Per anchor: d loss / d (side value), then each side's pair coefficients.
  std::vector<T> value_slope[2] = {std::vector<T>(n), std::vector<T>(n)};
  bool any_positive = false, any_negative = false;
  for (int64_t a = 0; a < n; ++a) {
    const AnchorResult<T>& result = f.results[a];
    if (rule.over == Over::kAnchors) {
      value_slope[kPositives][a] = weighted(weights[0][a], result.side_slope[kPositives]);
      value_slope[kNegatives][a] = weighted(weights[0][a], result.side_slope[kNegatives]);
    } else {
      value_slope[kPositives][a] = weights[0][a];
      value_slope[kNegatives][a] = rule.over == Over::kPairsOfEachSide ? weights[1][a] : T(0);
    }
    any_positive |= value_slope[kPositives][a] != T(0);
    any_negative |= value_slope[kNegatives][a] != T(0);
  }
  Coefficients<T> k;
  k.side[kPositives].resize(n);
  k.side[kNegatives].resize(n);
  for (int64_t a = 0; a < n; ++a) {
    k.side[kPositives][a] = side_coefficients(rule.side[kPositives], f.states.side[kPositives][a], value_slope[kPositives][a]);
    k.side[kNegatives][a] = side_coefficients(rule.side[kNegatives], f.states.side[kNegatives][a], value_slope[kNegatives][a]);
  }

  // Classes: positive pairs' weights, and the versus terms' coefficients A_a of the softmax over the
  // reference (per thread: a partner's A is written from its positives' rows).
  std::vector<std::vector<T>> versus_coefficient(needs.versus && any_positive ? num_threads : 0, std::vector<T>(n, T(0)));
  if (any_positive) {
    const SideRule<T>& side = rule.side[kPositives];
    std::vector<PositiveRow<T>> rows(num_threads);
    std::vector<std::vector<T>> weights_of(num_threads);
    for_each_class_block(f.blocks, [&](const ClassBlock& block, int thread_id) {
      const ClassGram<T> gram = class_gram<T>(f.source, f.classes, block);
      PositiveRow<T>& row = rows[thread_id];
      const int64_t block_rows = static_cast<int64_t>(gram.rows.size()), k_cols = static_cast<int64_t>(gram.cols.size());
      std::vector<T>& w = weights_of[thread_id];
      w.assign(static_cast<size_t>(block_rows * k_cols), T(0));
      T* weight = w.data();
      bool any = false;
      for (int64_t r = 0; r < block_rows; ++r) {
        const int64_t a = gram.rows[r];
        const PairCoefficients<T>& coefficients = k.side[kPositives][a];
        if (coefficients.exp_coefficient == T(0) && coefficients.term_coefficient == T(0)) continue;
        positive_row(rule, gram, r, f.states.hardest_negative[a], row);
        const SideState<T>& positives = f.states.side[kPositives][a];
        T* w_row = weight + r * k_cols;
        if (needs.versus) {
          const SideState<T>& negatives = f.states.side[kNegatives][a];
          VersusReferenceOf<T> ref{};
          own_reference(rule, positives, negatives, ref);
          const int64_t members = positives.kept + negatives.kept;
          std::vector<T>& coefficient_of = versus_coefficient[thread_id];
          T own_total = T(0);
          for (int64_t c = 0; c < k_cols; ++c) {
            if (!row.keep[c]) continue;
            if (rule.versus_partner) partner_reference(f.states.side[kNegatives][gram.cols[c]], ref);
            const VersusTerm<T> term = versus_term(rule, ref, row.x[c], members);
            const T q = weighted(coefficients.term_coefficient, term.slope);
            w_row[c] = -q;
            own_total += weighted(q, term.own_share);
            if (rule.versus_partner) coefficient_of[gram.cols[c]] += weighted(q, term.partner_share);
          }
          coefficient_of[a] += own_total;
          if (rule.versus_reference == VersusReference::kPositivesAndNegatives && own_total != T(0)) {
            // The positives are members of the reference softmax too: A_a e^{x_p - L_a}.
            const T normalizer = ref.own_shift + ref.own_log_sum;
            for (int64_t c = 0; c < k_cols; ++c) {
              if (row.keep[c]) w_row[c] += own_total * rule_exp(row.x[c] - normalizer);
            }
          }
        } else {
          for (int64_t c = 0; c < k_cols; ++c) {
            if (!row.keep[c]) continue;
            const T e = coefficients.exp_coefficient == T(0) ? T(0) : rule_exp(row.x[c] - coefficients.shift);
            w_row[c] = pair_logit_gradient(coefficients, side.term, row.x[c], e);
          }
        }
        for (int64_t c = 0; c < k_cols; ++c) {
          w_row[c] = row.keep[c] ? gram_weight(side, row.s[c], w_row[c]) : T(0);
          any |= w_row[c] != T(0);
        }
      }
      if (!any) return;
      auto [pair_total, self_total] = accumulators(thread_id);
      if (k_cols <= kDirectClassMembers) {
        // G[a] += w u_p and G[p] += w u_a for each weighted pair, in plain loops (see class_gram).
        const int64_t dim = f.operands.unit.size(1);
        const T* unit = f.operands.unit.template data_ptr<T>();
        T* g = pair_total.template data_ptr<T>();
        T* self = self_total.template data_ptr<T>();
        for (int64_t r = 0; r < block_rows; ++r) {
          const int64_t a = gram.rows[r];
          for (int64_t c = 0; c < k_cols; ++c) {
            const T pair_weight = weight[r * k_cols + c];
            if (pair_weight == T(0)) continue;
            const int64_t p = gram.cols[c];
            T* g_a = g + a * dim;
            T* g_p = g + p * dim;
            const T* u_a = unit + a * dim;
            const T* u_p = unit + p * dim;
#pragma omp simd
            for (int64_t d = 0; d < dim; ++d) {
              g_a[d] += pair_weight * u_p[d];
              g_p[d] += pair_weight * u_a[d];
            }
            self[a] += pair_weight;
            self[p] += pair_weight;
          }
        }
        return;
      }
      const auto index_options = at::TensorOptions().dtype(at::kLong);
      const auto rows_index = at::from_blob(const_cast<int64_t*>(gram.rows.data()), {block_rows}, index_options);
      const auto cols_index = at::from_blob(const_cast<int64_t*>(gram.cols.data()), {k_cols}, index_options);
      const auto w_tensor = at::from_blob(weight, {block_rows, k_cols}, options);
      const auto rows_unit = f.operands.unit.index_select(0, rows_index);
      const auto cols_unit = f.operands.unit.index_select(0, cols_index);
      pair_total.index_add_(0, rows_index, at::mm(w_tensor, cols_unit));
      pair_total.index_add_(0, cols_index, at::mm(w_tensor.t(), rows_unit));
      if (f.operands.distance) {
        self_total.index_add_(0, rows_index, w_tensor.sum(1));
        self_total.index_add_(0, cols_index, w_tensor.sum(0));
      }
    });
  }

  // The negatives' coefficients: their own side's, plus A_a times the reference softmax weight
  // e^{x_n - L_a} = e^{x_n - shift_a} e^{shift_a - L_a}.
  std::vector<PairCoefficients<T>>& negative_coefficients = k.side[kNegatives];
  bool exps = false, any_negative_weight = false;
  for (int64_t a = 0; a < n; ++a) {
    PairCoefficients<T>& coefficients = negative_coefficients[a];
    const SideState<T>& negatives = f.states.side[kNegatives][a];
    if (!versus_coefficient.empty() && negatives.kept > 0) {
      T total = T(0);
      for (const auto& own : versus_coefficient) total += own[a];
      if (total != T(0)) {
        coefficients.shift = negatives.maximum;
        T normalizer;
        if (rule.versus_reference == VersusReference::kPositivesAndNegatives) {
          infonce::RunningLogSumExp<T> both = f.states.side[kPositives][a].lse();
          both.merge(negatives.lse());
          normalizer = both.maximum + rule_log(both.sum);
        } else {
          normalizer = negatives.maximum + rule_log(negatives.exp_sum);
        }
        coefficients.exp_coefficient += total * rule_exp(negatives.maximum - normalizer);
      }
    }
    exps |= coefficients.exp_coefficient != T(0);
    any_negative_weight |= coefficients.exp_coefficient != T(0) || coefficients.term_coefficient != T(0);
  }
  if (any_negative_weight) {
    std::vector<TileScratch<T>> scratch(num_threads);
    for (auto& own : scratch) own.reserve(f.tile);
    const int32_t* ids = f.labels.ids.data();
    const CoefficientArrays<T> coefficient_arrays(negative_coefficients);
    for_each_tile<T>(f.source, f.tile, [&](const TileView<T>& t, int thread_id) {
      TileScratch<T>& own = scratch[thread_id];
      negatives_gradient_tile(rule, t, ids, f.states.hardest_positive.data(), coefficient_arrays, exps, own);
      auto [pair_total, self_total] = accumulators(thread_id);
      const auto m = at::from_blob(own.m.data(), {t.rows, t.cols}, options);
      pair_total.narrow(0, t.row_begin, t.rows).addmm_(m, f.operands.unit.narrow(0, t.col_begin, t.cols));
      if (f.operands.distance) self_total.narrow(0, t.row_begin, t.rows).add_(m.sum(1));
      if (!t.diagonal) {
        pair_total.narrow(0, t.col_begin, t.cols).addmm_(m.t(), f.operands.unit.narrow(0, t.row_begin, t.rows));
        if (f.operands.distance) self_total.narrow(0, t.col_begin, t.cols).add_(m.sum(0));
      }
    });
  }
  at::Tensor pair_total, self_total;
  for (int t = 0; t < num_threads; ++t) {
    if (!pair_totals[t].defined()) continue;
    if (!pair_total.defined()) {
      pair_total = pair_totals[t];
      self_total = self_totals[t];
    } else {
      pair_total.add_(pair_totals[t]);
      self_total.add_(self_totals[t]);
    }
  }
  if (!pair_total.defined()) return at::zeros({n, dim}, options);
  return gradient_of_rows(f.operands, pair_total, self_total);
}

constexpr const char* kForwardOp = "pair_rule_forward";
constexpr const char* kBackwardOp = "_pair_rule_backward";

void check_inputs(const char* op, const at::Tensor& embeddings, const at::Tensor& labels, c10::ArrayRef<double> params,
                  c10::ArrayRef<int64_t> codes) {
  check_floating_inputs(op, {{"embeddings", &embeddings}});
  check_int64_input(op, "labels", labels);
  check_embeddings_and_labels(embeddings, labels, "CPU");
  TORCH_CHECK(embeddings.device().is_cpu(), "embedplug::", op, ": the CPU kernel got a tensor on ", embeddings.device());
  check_encoded_rule(op, params, codes);
}

using ForwardOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

ForwardOutputs pair_rule_forward_cpu(
    const at::Tensor& embeddings, const at::Tensor& labels, c10::ArrayRef<double> params, c10::ArrayRef<int64_t> codes,
    bool compute_grad) {
  check_inputs(kForwardOp, embeddings, labels, params, codes);
  const auto labels_contiguous = labels.contiguous();
  const int64_t* label_ptr = labels_contiguous.data_ptr<int64_t>();
  const int64_t n = embeddings.size(0);
  ForwardOutputs out;
  AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "pair_rule_forward_cpu", [&] {
    const Rule<scalar_t> rule = decode<scalar_t>(codes.data(), params.data());
    const Forward<scalar_t> f(rule, embeddings, label_ptr);
    const int32_t s = streams(rule);
    auto loss_sums = at::empty({s, n}, embeddings.options());
    auto counted = at::empty({s, n}, labels.options());
    auto terms = at::empty({s, n}, labels.options());
    auto positive_pairs = at::empty({n}, labels.options());
    auto negative_pairs = at::empty({n}, labels.options());
    scalar_t* loss_ptr = loss_sums.data_ptr<scalar_t>();
    int64_t* counted_ptr = counted.data_ptr<int64_t>();
    int64_t* terms_ptr = terms.data_ptr<int64_t>();
    const scalar_t nan = std::numeric_limits<scalar_t>::quiet_NaN();
    for (int64_t a = 0; a < n; ++a) {
      for (int32_t k = 0; k < s; ++k) {
        // Non-finite input: every anchor meets the bad row, so every sum is NaN (the reference's
        // poison), and the counts stay those of the pair structure.
        loss_ptr[k * n + a] = f.non_finite ? nan : f.results[a].loss[k];
        counted_ptr[k * n + a] = f.results[a].counted[k];
        terms_ptr[k * n + a] = f.results[a].terms[k];
      }
      positive_pairs.data_ptr<int64_t>()[a] = f.states.side[kPositives][a].kept;
      negative_pairs.data_ptr<int64_t>()[a] = f.states.side[kNegatives][a].kept;
    }
    at::Tensor unit_grad = at::empty({0}, embeddings.options());
    if (compute_grad) {
      unit_grad = at::empty({s, n, embeddings.size(1)}, embeddings.options());
      for (int32_t k = 0; k < s; ++k) {
        std::vector<scalar_t> weights[2] = {std::vector<scalar_t>(n, scalar_t(0)), std::vector<scalar_t>(n, scalar_t(0))};
        std::fill(weights[k].begin(), weights[k].end(), scalar_t(1));
        unit_grad[k].copy_(gradient(f, weights));
      }
    }
    out = {loss_sums, counted, terms, positive_pairs, negative_pairs, unit_grad,
           at::scalar_tensor(f.near_duplicates, labels.options())};
  });
  return out;
}

at::Tensor pair_rule_backward_cpu(const at::Tensor& grad_loss_sums, const at::Tensor& embeddings, const at::Tensor& labels,
                                  const at::Tensor& unit_grad, c10::ArrayRef<double> params, c10::ArrayRef<int64_t> codes) {
  check_inputs(kBackwardOp, embeddings, labels, params, codes);
  check_floating_inputs(kBackwardOp, {{"grad_loss_sums", &grad_loss_sums}});
  const int64_t n = embeddings.size(0);
  const int64_t s = codes[2 * kSideCodes + 6] == static_cast<int64_t>(Over::kPairsOfEachSide) ? 2 : 1;
  TORCH_CHECK(grad_loss_sums.dim() == 2 && grad_loss_sums.size(0) == s && grad_loss_sums.size(1) == n,
              "embedplug::", kBackwardOp, ": grad_loss_sums must be [", s, ", ", n, "], got ", grad_loss_sums.sizes());
  const auto grad = grad_loss_sums.detach().to(embeddings.scalar_type());
  if (auto scaled = scaled_unit_gradient(grad, unit_grad)) return *scaled;
  const auto labels_contiguous = labels.contiguous();
  const int64_t* label_ptr = labels_contiguous.data_ptr<int64_t>();
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "pair_rule_backward_cpu", [&] {
    const Rule<scalar_t> rule = decode<scalar_t>(codes.data(), params.data());
    const Forward<scalar_t> f(rule, embeddings, label_ptr);
    const auto contiguous = grad.contiguous();
    const scalar_t* g = contiguous.data_ptr<scalar_t>();
    std::vector<scalar_t> weights[2] = {std::vector<scalar_t>(g, g + n),
                                        s == 2 ? std::vector<scalar_t>(g + n, g + 2 * n) : std::vector<scalar_t>(n, 0)};
    out = gradient(f, weights);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(embedplug, CPU, m) {
  m.impl(kForwardOp, &pair_rule_forward_cpu);
  m.impl(kBackwardOp, &pair_rule_backward_cpu);
}

}  // namespace cpu
}  // namespace embedplug
