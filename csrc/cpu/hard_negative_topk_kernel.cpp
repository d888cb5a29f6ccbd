// Dataset-scale hard-negative top-k, fused with the similarity GEMM (FAISS's flat search): per block of
// queries, one BLAS GEMM per corpus tile into a per-thread buffer, then an epilogue that decides each
// score's removal rule and folds the survivors into each query's running ranked list
// (csrc/hard_negative_topk_rules.h). Memory beyond the inputs is, per thread, one tile and the lists
// of one query block (256 x keep), plus the [Q, k] outputs; the Q x C score matrix never exists.
//
// Per row of a tile the epilogue makes two passes over the scores, both in L1:
//   1. the score filters: branch-free, so the loop vectorises; it counts each removal and overwrites
//      removed scores with -inf in the buffer; the few listed rows (excluded, positives) are
//      re-attributed one by one, as their rule comes first;
//   2. the list update: a compare with the row's current last entry, and only for a score that beats
//      it the listed check and a binary-search insertion. Once a list is full that branch is rarely
//      taken (the filters' outcome, often a coin flip near the top, is no branch at all). Tiles are
//      visited in increasing corpus index, so a later equal score never enters ahead of an earlier one.
// Rows are independent: blocks of queries run in parallel, and the counts are integers summed per
// block, so the result does not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <limits>
#include <vector>

#include "hard_negative_topk_host.h"
#include "hard_negative_topk_rules.h"

namespace embedplug {
namespace cpu {
namespace {

using namespace hard_negative_topk;

// 256 x 1024 float32 = 1 MiB per thread, about one core's L2; each row of it (4 KiB) stays in L1 for both
// epilogue passes. 256 query rows per GEMM ran ~8% faster than 128 (MKL, D = 384, one thread).
constexpr int64_t kQueryBlock = 256;
constexpr int64_t kCorpusTile = 1024;
// A problem with at most this many scores (16 MiB in float32) runs as one [Q, C] GEMM, the product
// sentence-transformers' own search computes for Q <= 16,384 (cos_sim on a query chunk and the whole
// corpus). BLAS rounds an entry differently in differently shaped products, so only that shape gives
// its scores bit for bit, and with them its order of near ties and its side of every margin. Larger
// problems take the tiles, whose memory does not grow with the corpus.
constexpr int64_t kSingleGemmScores = int64_t(1) << 22;

// Scores per vectorised "does any beat the list's last entry" test in the list update.
constexpr int64_t kFoldChunk = 64;

using Counts = std::array<int64_t, kRemovalRules>;

// One row of one tile through the rules (open mode): counts each score's removal into `removed` and
// overwrites every removed score with -inf, so that the list update only compares. The listed rows
// (excluded, positives) are re-attributed first, from their raw scores: their rule comes first.
template <typename scalar_t>
void filter_row(scalar_t* scores, int64_t columns, int64_t column_begin, const ScoreFilters<scalar_t>& filters,
                const int64_t* listed, int64_t listed_width, int64_t excluded_width, bool exclude_positives,
                Counts& removed) {
  // `listed` is the row's excluded entries then its positives; each distinct row in this tile once.
  const int64_t* positives = listed + excluded_width;
  const int64_t positive_width = listed_width - excluded_width;
  for (int64_t j = 0; j < listed_width; ++j) {
    const int64_t column = listed[j];
    if (column < column_begin || column >= column_begin + columns) continue;
    if (std::find(listed, listed + j, column) != listed + j) continue;
    const int listed_rule = listed_removal(column, listed, excluded_width, positives, positive_width, exclude_positives);
    if (listed_rule == kKept) continue;
    // Counted here as listed; the loop below counts it again by score, so take that back.
    const scalar_t score = scores[column - column_begin];
    const int by_score = score_removal(score, filters);
    if (by_score != kKept) removed[by_score] -= 1;
    const int rule = candidate_removal(listed_rule, score, filters);
    if (rule != kKept) removed[rule] += 1;
  }
  // Branch-free, so it vectorises (float32; SSE2 has no mixed double/int lanes for it): most of the
  // epilogue's work is this loop. A local copy of the filters: the stores into `scores` could
  // otherwise alias them and block the hoisting. 32-bit counters, like the scores' lanes (a tile row
  // has at most kSingleGemmScores columns).
  const ScoreFilters<scalar_t> row_filters = filters;
  const scalar_t removed_score = -positive_infinity<scalar_t>();
  int32_t absolute = 0, relative = 0, maximum = 0, minimum = 0;
  for (int64_t c = 0; c < columns; ++c) {
    const scalar_t score = scores[c];
    const ScoreRemovals flags = score_removals(score, row_filters);
    absolute += flags.absolute_margin;
    relative += flags.relative_margin;
    maximum += flags.max_score;
    minimum += flags.min_score;
    const int removed_by_score = flags.absolute_margin | flags.relative_margin | flags.max_score | flags.min_score;
    scores[c] = removed_by_score ? removed_score : score;
  }
  removed[kAbsoluteMargin] += absolute;
  removed[kRelativeMargin] += relative;
  removed[kMaxScore] += maximum;
  removed[kMinScore] += minimum;
}

// One row of one tile into the row's ranked list [keep]. In open mode the scores went through
// filter_row (removed ones are -inf and never rank), and only a score that beats the list's last
// entry is checked against the listed rows; in window mode the raw scores enter.
template <typename scalar_t>
void fold_row(const scalar_t* scores, int64_t columns, int64_t column_begin, bool skip_listed,
              const ScoreFilters<scalar_t>& filters, const int64_t* listed, int64_t listed_width,
              int64_t excluded_width, bool exclude_positives, scalar_t* list_scores, int64_t* list_indices,
              int64_t keep) {
  scalar_t last_score = list_scores[keep - 1];
  int64_t last_index = list_indices[keep - 1];
  const int64_t* positives = listed + excluded_width;
  const int64_t positive_width = listed_width - excluded_width;
  for (int64_t chunk_begin = 0; chunk_begin < columns; chunk_begin += kFoldChunk) {
    const int64_t chunk_end = std::min(chunk_begin + kFoldChunk, columns);
    // Columns increase along the scan and every index already in the list is below them, so a score can
    // only rank before the last entry by being greater: a vectorised count skips the chunk when none is.
    int32_t greater = 0;
    for (int64_t c = chunk_begin; c < chunk_end; ++c) greater += scores[c] > last_score;
    if (greater == 0) continue;
    for (int64_t c = chunk_begin; c < chunk_end; ++c) {
      const scalar_t score = scores[c];
      const int64_t column = column_begin + c;
      if (!ranks_before(score, column, last_score, last_index)) continue;
      if (skip_listed) {
        const int listed_rule =
            listed_removal(column, listed, excluded_width, positives, positive_width, exclude_positives);
        if (candidate_removal(listed_rule, score, filters) != kKept) continue;
      }
      insert_ranked(list_scores, list_indices, keep, score, column);
      last_score = list_scores[keep - 1];
      last_index = list_indices[keep - 1];
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> hard_negative_topk_cpu(
    const at::Tensor& queries_in, const at::Tensor& corpus_in, int64_t k, const at::Tensor& positives_in,
    const at::Tensor& positive_scores_in, const at::Tensor& excluded_in, bool exclude_positives,
    std::optional<double> absolute_margin, std::optional<double> relative_margin, std::optional<double> max_score,
    std::optional<double> min_score, int64_t range_min, std::optional<int64_t> range_max,
    std::optional<int64_t> reserved_slots) {
  const TopKPlan plan = check_hard_negative_topk_inputs(
      queries_in, corpus_in, k, positives_in, positive_scores_in, excluded_in, exclude_positives, absolute_margin,
      relative_margin, max_score, min_score, range_min, range_max, reserved_slots);
  const auto queries = queries_in.contiguous();
  const auto corpus = corpus_in.contiguous();
  // Excluded entries first, then positives: one row-major [Q, E + P] table for the listed rows.
  const auto listed = at::cat({excluded_in, positives_in}, 1).contiguous();
  const auto positives = positives_in.contiguous();
  const auto positive_scores = positive_scores_in.to(queries.scalar_type()).contiguous();
  const int64_t num_queries = queries.size(0);
  const int64_t num_corpus = corpus.size(0);
  const int64_t positive_width = positives.size(1);
  const int64_t excluded_width = excluded_in.size(1);
  const int64_t listed_width = listed.size(1);
  const int64_t keep = plan.keep;
  const bool rules_in_stream = !plan.window;

  auto out_scores = at::empty({num_queries, k}, queries.options());
  auto out_indices = at::empty({num_queries, k}, queries.options().dtype(at::kLong));
  auto removed = at::zeros({kRemovalRules}, queries.options().dtype(at::kLong));
  const bool single_gemm = num_queries * num_corpus <= kSingleGemmScores;
  const int64_t query_block = single_gemm ? num_queries : kQueryBlock;
  const int64_t num_blocks = (num_queries + query_block - 1) / query_block;
  std::vector<Counts> block_removed(static_cast<size_t>(num_blocks), Counts{});

  AT_DISPATCH_FLOATING_TYPES(queries.scalar_type(), "hard_negative_topk_cpu", [&] {
    const int64_t tile = single_gemm ? num_corpus : std::min(kCorpusTile, num_corpus);
    const scalar_t* positive_score_data = positive_scores.data_ptr<scalar_t>();
    const int64_t* positive_data = positives.data_ptr<int64_t>();
    const int64_t* listed_data = listed.data_ptr<int64_t>();
    scalar_t* out_score_data = out_scores.data_ptr<scalar_t>();
    int64_t* out_index_data = out_indices.data_ptr<int64_t>();
    at::parallel_for(0, num_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
      std::vector<scalar_t> buffer(static_cast<size_t>(query_block * tile));
      std::vector<scalar_t> list_scores(static_cast<size_t>(query_block * keep));
      std::vector<int64_t> list_indices(static_cast<size_t>(query_block * keep));
      std::vector<ScoreFilters<scalar_t>> filters(query_block);
      for (int64_t b = block_begin; b < block_end; ++b) {
        const int64_t row_begin = b * query_block;
        const int64_t rows = std::min(query_block, num_queries - row_begin);
        Counts& counts = block_removed[static_cast<size_t>(b)];
        std::fill(list_scores.begin(), list_scores.end(), -positive_infinity<scalar_t>());
        std::fill(list_indices.begin(), list_indices.end(), int64_t(-1));
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t row = row_begin + r;
          const scalar_t hardest = hardest_positive_score(positive_score_data + row * positive_width,
                                                          positive_data + row * positive_width, positive_width);
          filters[r] = make_score_filters<scalar_t>(
              hardest, plan.has_absolute_margin, static_cast<scalar_t>(plan.absolute_margin), plan.has_relative_margin,
              static_cast<scalar_t>(plan.relative_margin), plan.has_max_score, static_cast<scalar_t>(plan.max_score),
              plan.has_min_score, static_cast<scalar_t>(plan.min_score));
        }
        const auto query_rows = queries.narrow(0, row_begin, rows);
        for (int64_t column_begin = 0; column_begin < num_corpus; column_begin += tile) {
          const int64_t columns = std::min(tile, num_corpus - column_begin);
          auto similarities = at::from_blob(buffer.data(), {rows, columns}, queries.options());
          at::mm_out(similarities, query_rows, corpus.narrow(0, column_begin, columns).t());
          for (int64_t r = 0; r < rows; ++r) {
            scalar_t* row_scores = buffer.data() + r * columns;
            const int64_t* row_listed = listed_data + (row_begin + r) * listed_width;
            if (rules_in_stream) {
              filter_row(row_scores, columns, column_begin, filters[r], row_listed, listed_width, excluded_width,
                         exclude_positives, counts);
            }
            fold_row(row_scores, columns, column_begin, rules_in_stream, filters[r], row_listed, listed_width,
                     excluded_width, exclude_positives, list_scores.data() + r * keep, list_indices.data() + r * keep,
                     keep);
          }
        }
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t row = row_begin + r;
          const int64_t* row_listed = listed_data + row * listed_width;
          emit_ranked_survivors(list_scores.data() + r * keep, list_indices.data() + r * keep, keep, plan.window,
                                row_listed, excluded_width, row_listed + excluded_width, positive_width,
                                exclude_positives, filters[r], plan.range_min, k, out_score_data + row * k,
                                out_index_data + row * k, counts.data());
        }
      }
    });
  });
  int64_t* removed_data = removed.data_ptr<int64_t>();
  for (const Counts& counts : block_removed) {
    for (int rule = 0; rule < kRemovalRules; ++rule) removed_data[rule] += counts[rule];
  }
  return {out_scores, out_indices, removed};
}

}  // namespace

TORCH_LIBRARY_IMPL(embedplug, CPU, m) {
  m.impl("hard_negative_topk", &hard_negative_topk_cpu);
}

}  // namespace cpu
}  // namespace embedplug
