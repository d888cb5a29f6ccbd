// CUDA twin of csrc/cpu/hard_negative_topk_kernel.cpp: per block of queries, one cuBLAS GEMM (at::mm_out
// on the current stream) per corpus tile into a reused buffer bounded by row_block_size(), then an
// epilogue kernel, one thread block per query row, that applies the rules of
// csrc/hard_negative_topk_rules.h and folds the row into the query's running ranked list (global
// memory, [Q, keep]); a last kernel, one thread per query, writes the survivors ranked range_min ..
// range_min + k - 1 (and, in window mode, applies the rules to the raw list first).
//
// Kept simple rather than fast: per round of 256 columns the threads filter their score and collect the
// candidates that beat the row's current last entry in shared memory, and thread 0 inserts them. The
// result of the insertions does not depend on their order (insert_ranked's order is total over distinct
// indices), so the atomically claimed slots leave the output deterministic; the removal counts are
// integers (atomics on integers are exact). A warp/block select (FAISS's runL2SelectMin) is the later
// optimisation.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <limits>

#include "cuda/cuda_common.cuh"
#include "hard_negative_topk_host.h"
#include "hard_negative_topk_rules.h"

namespace embedplug {
namespace cuda {
namespace {

using namespace hard_negative_topk;

// Columns of one GEMM tile: with row_block_size() this bounds the buffer at kMaxBufferScalars.
constexpr int64_t kCorpusTile = 16384;

// The options every epilogue thread needs, by value (cast to scalar_t on the host, as the CPU does).
template <typename scalar_t>
struct FilterOptions {
  bool has_absolute_margin, has_relative_margin, has_max_score, has_min_score;
  scalar_t absolute_margin, relative_margin, max_score, min_score;
};

// One query's rows of the shared tables.
struct RowLists {
  const int64_t* listed;  // [listed_width]: excluded entries, then positives
  int64_t excluded_width;
  const int64_t* positives;  // = listed + excluded_width
  int64_t positive_width;
};

template <typename scalar_t>
__device__ ScoreFilters<scalar_t> row_filters(const FilterOptions<scalar_t>& options, const scalar_t* positive_scores,
                                              const int64_t* positives, int64_t positive_width) {
  const scalar_t hardest = hardest_positive_score(positive_scores, positives, positive_width);
  return make_score_filters<scalar_t>(hardest, options.has_absolute_margin, options.absolute_margin,
                                      options.has_relative_margin, options.relative_margin, options.has_max_score,
                                      options.max_score, options.has_min_score, options.min_score);
}

template <typename scalar_t>
__global__ void fold_tile_kernel(const scalar_t* __restrict__ tile, int64_t columns, int64_t row_begin,
                                 int64_t column_begin, const scalar_t* __restrict__ positive_scores,
                                 const int64_t* __restrict__ listed, int64_t listed_width, int64_t excluded_width,
                                 bool exclude_positives, bool apply_rules, FilterOptions<scalar_t> options,
                                 scalar_t* __restrict__ best_scores, int64_t* __restrict__ best_indices, int64_t keep,
                                 unsigned long long* __restrict__ removed) {
  __shared__ scalar_t candidate_scores[kThreadsPerBlock];
  __shared__ int64_t candidate_indices[kThreadsPerBlock];
  __shared__ int candidate_count;
  __shared__ unsigned long long block_removed[kRemovalRules];
  const int64_t row = row_begin + blockIdx.x;
  const scalar_t* row_scores = tile + static_cast<int64_t>(blockIdx.x) * columns;
  const int64_t positive_width = listed_width - excluded_width;
  const int64_t* row_listed = listed + row * listed_width;
  const int64_t* row_positives = row_listed + excluded_width;
  const ScoreFilters<scalar_t> filters =
      row_filters(options, positive_scores + row * positive_width, row_positives, positive_width);
  scalar_t* list_scores = best_scores + row * keep;
  int64_t* list_indices = best_indices + row * keep;
  unsigned long long counts[kRemovalRules] = {0, 0, 0, 0, 0, 0};
  if (threadIdx.x < kRemovalRules) block_removed[threadIdx.x] = 0;
  for (int64_t round_begin = 0; round_begin < columns; round_begin += blockDim.x) {
    if (threadIdx.x == 0) candidate_count = 0;
    // Also makes thread 0's insertions of the previous round visible before the last entry is read.
    __syncthreads();
    const scalar_t last_score = list_scores[keep - 1];
    const int64_t last_index = list_indices[keep - 1];
    const int64_t c = round_begin + threadIdx.x;
    if (c < columns) {
      const scalar_t score = row_scores[c];
      const int64_t column = column_begin + c;
      bool survives = true;
      if (apply_rules) {
        const int listed_rule =
            listed_removal(column, row_listed, excluded_width, row_positives, positive_width, exclude_positives);
        const int rule = candidate_removal(listed_rule, score, filters);
        if (rule != kKept) {
          counts[rule] += 1;
          survives = false;
        }
      }
      if (survives && ranks_before(score, column, last_score, last_index)) {
        const int slot = atomicAdd(&candidate_count, 1);
        candidate_scores[slot] = score;
        candidate_indices[slot] = column;
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int i = 0; i < candidate_count; ++i) {
        insert_ranked(list_scores, list_indices, keep, candidate_scores[i], candidate_indices[i]);
      }
    }
  }
  for (int rule = 0; rule < kRemovalRules; ++rule) {
    if (counts[rule] != 0) atomicAdd(&block_removed[rule], counts[rule]);
  }
  __syncthreads();
  if (threadIdx.x < kRemovalRules && block_removed[threadIdx.x] != 0) {
    atomicAdd(&removed[threadIdx.x], block_removed[threadIdx.x]);
  }
}

template <typename scalar_t>
__global__ void emit_kernel(const scalar_t* __restrict__ best_scores, const int64_t* __restrict__ best_indices,
                            int64_t keep, int64_t num_queries, bool window, const scalar_t* __restrict__ positive_scores,
                            const int64_t* __restrict__ listed, int64_t listed_width, int64_t excluded_width,
                            bool exclude_positives, FilterOptions<scalar_t> options, int64_t first, int64_t k,
                            scalar_t* __restrict__ out_scores, int64_t* __restrict__ out_indices,
                            unsigned long long* __restrict__ removed) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= num_queries) return;
  const int64_t positive_width = listed_width - excluded_width;
  const int64_t* row_listed = listed + row * listed_width;
  const int64_t* row_positives = row_listed + excluded_width;
  const ScoreFilters<scalar_t> filters =
      row_filters(options, positive_scores + row * positive_width, row_positives, positive_width);
  int64_t counts[kRemovalRules] = {0, 0, 0, 0, 0, 0};
  emit_ranked_survivors(best_scores + row * keep, best_indices + row * keep, keep, window, row_listed, excluded_width,
                        row_positives, positive_width, exclude_positives, filters, first, k, out_scores + row * k,
                        out_indices + row * k, counts);
  for (int rule = 0; rule < kRemovalRules; ++rule) {
    if (counts[rule] != 0) atomicAdd(&removed[rule], static_cast<unsigned long long>(counts[rule]));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> hard_negative_topk_cuda(
    const at::Tensor& queries_in, const at::Tensor& corpus_in, int64_t k, const at::Tensor& positives_in,
    const at::Tensor& positive_scores_in, const at::Tensor& excluded_in, bool exclude_positives,
    std::optional<double> absolute_margin, std::optional<double> relative_margin, std::optional<double> max_score,
    std::optional<double> min_score, int64_t range_min, std::optional<int64_t> range_max,
    std::optional<int64_t> reserved_slots) {
  check_same_cuda_device("hard_negative_topk", {{"queries", &queries_in},
                                                {"corpus", &corpus_in},
                                                {"positives", &positives_in},
                                                {"positive_scores", &positive_scores_in},
                                                {"excluded", &excluded_in}});
  const TopKPlan plan = check_hard_negative_topk_inputs(
      queries_in, corpus_in, k, positives_in, positive_scores_in, excluded_in, exclude_positives, absolute_margin,
      relative_margin, max_score, min_score, range_min, range_max, reserved_slots);
  const at::cuda::CUDAGuard guard(queries_in.device());
  const auto queries = queries_in.contiguous();
  const auto corpus = corpus_in.contiguous();
  const auto listed = at::cat({excluded_in, positives_in}, 1).contiguous();
  const auto positive_scores = positive_scores_in.to(queries.scalar_type()).contiguous();
  const int64_t num_queries = queries.size(0);
  const int64_t num_corpus = corpus.size(0);
  const int64_t excluded_width = excluded_in.size(1);
  const int64_t listed_width = listed.size(1);
  const int64_t keep = plan.keep;

  auto best_scores = at::full({num_queries, keep}, -std::numeric_limits<double>::infinity(), queries.options());
  auto best_indices = at::full({num_queries, keep}, -1, queries.options().dtype(at::kLong));
  auto out_scores = at::empty({num_queries, k}, queries.options());
  auto out_indices = at::empty({num_queries, k}, queries.options().dtype(at::kLong));
  auto removed = at::zeros({kRemovalRules}, queries.options().dtype(at::kLong));
  auto* removed_data = reinterpret_cast<unsigned long long*>(removed.data_ptr<int64_t>());

  const int64_t tile_columns = std::min(kCorpusTile, num_corpus);
  const int64_t block_rows = row_block_size(num_queries, tile_columns);
  auto buffer = at::empty({block_rows * tile_columns}, queries.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(queries.scalar_type(), "hard_negative_topk_cuda", [&] {
    const FilterOptions<scalar_t> options{
        plan.has_absolute_margin, plan.has_relative_margin, plan.has_max_score, plan.has_min_score,
        static_cast<scalar_t>(plan.absolute_margin), static_cast<scalar_t>(plan.relative_margin),
        static_cast<scalar_t>(plan.max_score), static_cast<scalar_t>(plan.min_score)};
    for (int64_t row_begin = 0; row_begin < num_queries; row_begin += block_rows) {
      const int64_t rows = std::min(block_rows, num_queries - row_begin);
      const auto query_rows = queries.narrow(0, row_begin, rows);
      for (int64_t column_begin = 0; column_begin < num_corpus; column_begin += tile_columns) {
        const int64_t columns = std::min(tile_columns, num_corpus - column_begin);
        auto similarities = buffer.narrow(0, 0, rows * columns).view({rows, columns});
        at::mm_out(similarities, query_rows, corpus.narrow(0, column_begin, columns).t());
        fold_tile_kernel<scalar_t><<<static_cast<unsigned int>(rows), kThreadsPerBlock, 0, stream>>>(
            similarities.data_ptr<scalar_t>(), columns, row_begin, column_begin, positive_scores.data_ptr<scalar_t>(),
            listed.data_ptr<int64_t>(), listed_width, excluded_width, exclude_positives, !plan.window, options,
            best_scores.data_ptr<scalar_t>(), best_indices.data_ptr<int64_t>(), keep, removed_data);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    const auto emit_blocks = static_cast<unsigned int>(ceil_div(num_queries, kThreadsPerBlock));
    emit_kernel<scalar_t><<<emit_blocks, kThreadsPerBlock, 0, stream>>>(
        best_scores.data_ptr<scalar_t>(), best_indices.data_ptr<int64_t>(), keep, num_queries, plan.window,
        positive_scores.data_ptr<scalar_t>(), listed.data_ptr<int64_t>(), listed_width, excluded_width,
        exclude_positives, options, plan.range_min, k, out_scores.data_ptr<scalar_t>(),
        out_indices.data_ptr<int64_t>(), removed_data);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out_scores, out_indices, removed};
}

}  // namespace

TORCH_LIBRARY_IMPL(embedplug, CUDA, m) {
  m.impl("hard_negative_topk", &hard_negative_topk_cuda);
}

}  // namespace cuda
}  // namespace embedplug
