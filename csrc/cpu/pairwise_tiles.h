// Shared machinery for the fused pairwise-distance kernels (FAISS-style): the Gram matrix is
// produced one (row tile x column tile) block at a time by a BLAS GEMM into a reused buffer, and an
// epilogue turns each block into distances and folds it into per-row running results. Memory is
// one tile per thread; no N x N matrix is ever allocated.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string_view>
#include <vector>

namespace embedplug {
namespace cpu {

enum class DistanceKind { kEuclidean, kSquaredEuclidean, kCosine };

inline DistanceKind parse_distance(std::string_view name) {
  if (name == "euclidean") return DistanceKind::kEuclidean;
  if (name == "squared_euclidean") return DistanceKind::kSquaredEuclidean;
  if (name == "cosine") return DistanceKind::kCosine;
  TORCH_CHECK(false, "embedplug: unknown distance '", std::string(name),
              "'; expected one of 'euclidean', 'squared_euclidean', 'cosine'");
}

// Rows that enter the GEMM plus the per-row squared norms the euclidean epilogue needs.
// Cosine distance is computed on rows normalised exactly like torch.nn.functional.normalize
// (x / max(||x||, 1e-12)), which is what sentence-transformers' cos_sim does.
struct GemmOperand {
  at::Tensor rows;           // [N, D] contiguous
  at::Tensor squared_norms;  // [N], only filled for the euclidean kinds
};

inline constexpr double kNormalizeEps = 1e-12;

inline GemmOperand prepare_operand(const at::Tensor& embeddings, DistanceKind kind) {
  GemmOperand operand;
  if (kind == DistanceKind::kCosine) {
    auto norms = embeddings.norm(2, /*dim=*/1, /*keepdim=*/true).clamp_min(kNormalizeEps);
    operand.rows = (embeddings / norms).contiguous();
  } else {
    operand.rows = embeddings.contiguous();
    operand.squared_norms = operand.rows.mul(operand.rows).sum(1).contiguous();
  }
  return operand;
}

// Gram value -> distance, with sentence-transformers' conventions: squared distances are
// clamped at 0 (rounding can make them negative) and sqrt(0) is 0 (ST masks it to avoid an
// infinite gradient). NaN stays NaN so that bad input poisons the loss instead of vanishing.
template <typename scalar_t>
inline scalar_t finish_distance(DistanceKind kind, scalar_t gram, scalar_t squared_norm_row,
                                scalar_t squared_norm_col) {
  if (kind == DistanceKind::kCosine) return scalar_t(1) - gram;
  scalar_t squared = (squared_norm_col - scalar_t(2) * gram) + squared_norm_row;
  squared = squared < scalar_t(0) ? scalar_t(0) : squared;
  if (kind == DistanceKind::kSquaredEuclidean) return squared;
  return squared == scalar_t(0) ? scalar_t(0) : std::sqrt(squared);
}

struct TilePair {
  int64_t row_begin, row_end, col_begin, col_end;
  bool on_diagonal() const { return row_begin == col_begin; }
};

// Upper-triangular tile pairs (row tile <= column tile): each unordered block is computed once.
inline std::vector<TilePair> upper_triangular_tiles(int64_t n, int64_t tile) {
  std::vector<TilePair> pairs;
  for (int64_t r = 0; r < n; r += tile) {
    for (int64_t c = r; c < n; c += tile) {
      pairs.push_back({r, std::min(r + tile, n), c, std::min(c + tile, n)});
    }
  }
  return pairs;
}

// Runs `epilogue(pair, gram_block, thread_id)` for every upper-triangular tile pair, in parallel
// over pairs. gram_block is a contiguous [rows x cols] view of rows[row tile] . rows[col tile]^T
// living in a per-thread buffer. The GEMM inside a parallel region runs single-threaded (nested
// OpenMP is off), so the parallelism is over tiles, which keeps every core busy on both the GEMM
// and the epilogue.
template <typename scalar_t, typename Epilogue>
void for_each_gram_tile(const at::Tensor& rows, int64_t tile, Epilogue&& epilogue) {
  const int64_t n = rows.size(0);
  const auto pairs = upper_triangular_tiles(n, tile);
  const int num_threads = at::get_num_threads();
  std::vector<std::vector<scalar_t>> buffers(num_threads);
  at::parallel_for(0, static_cast<int64_t>(pairs.size()), 1, [&](int64_t begin, int64_t end) {
    const int thread_id = at::get_thread_num();
    auto& buffer = buffers[thread_id];
    buffer.resize(static_cast<size_t>(tile * tile));
    for (int64_t p = begin; p < end; ++p) {
      const TilePair& pair = pairs[p];
      const int64_t tile_rows = pair.row_end - pair.row_begin;
      const int64_t tile_cols = pair.col_end - pair.col_begin;
      auto gram = at::from_blob(buffer.data(), {tile_rows, tile_cols}, rows.options());
      at::mm_out(gram, rows.narrow(0, pair.row_begin, tile_rows),
                 rows.narrow(0, pair.col_begin, tile_cols).t());
      epilogue(pair, static_cast<const scalar_t*>(buffer.data()), thread_id);
    }
  });
}

// Running arg-max / arg-min with torch.max's tie rule (the smallest index wins), expressed as a
// total order so that results merged from different threads do not depend on scheduling.
template <typename scalar_t>
struct ArgExtreme {
  scalar_t value;
  int64_t index;
};

template <typename scalar_t>
inline ArgExtreme<scalar_t> empty_argmax() {
  return {-std::numeric_limits<scalar_t>::infinity(), std::numeric_limits<int64_t>::max()};
}
template <typename scalar_t>
inline ArgExtreme<scalar_t> empty_argmin() {
  return {std::numeric_limits<scalar_t>::infinity(), std::numeric_limits<int64_t>::max()};
}
template <typename scalar_t>
inline void keep_max(ArgExtreme<scalar_t>& best, scalar_t value, int64_t index) {
  if (value > best.value || (value == best.value && index < best.index)) best = {value, index};
}
template <typename scalar_t>
inline void keep_min(ArgExtreme<scalar_t>& best, scalar_t value, int64_t index) {
  if (value < best.value || (value == best.value && index < best.index)) best = {value, index};
}
template <typename scalar_t>
inline bool is_set(const ArgExtreme<scalar_t>& best) {
  return best.index != std::numeric_limits<int64_t>::max();
}

}  // namespace cpu
}  // namespace embedplug
