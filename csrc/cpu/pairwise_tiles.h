// Shared machinery for the fused pairwise-distance kernels (FAISS-style): the Gram matrix is
// produced one (row tile x column tile) block at a time by a BLAS GEMM into a reused buffer, and an
// epilogue turns each block into distances and folds it into per-row running results. Memory is
// one tile per thread; no N x N matrix is ever allocated.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <string_view>
#include <utility>
#include <vector>

#include "pairwise_common.h"
#include "pairwise_rules.h"

namespace embedplug {
namespace cpu {

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
// over pairs. gram_block is a contiguous [rows x cols] view of left[row tile] . right[col tile]^T
// living in a per-thread buffer, copied from `full` (an [N, N] product already computed) when it is
// defined. The GEMM inside a parallel region runs single-threaded (nested OpenMP is off), so the
// parallelism is over tiles, which keeps every core busy on both the GEMM and the epilogue.
template <typename scalar_t, typename Epilogue>
void for_each_gram_tile_of(const at::Tensor& left, const at::Tensor& right, const at::Tensor& full, int64_t tile,
                           Epilogue&& epilogue) {
  const int64_t n = left.size(0);
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
      auto gram = at::from_blob(buffer.data(), {tile_rows, tile_cols}, left.options());
      if (full.defined()) {
        gram.copy_(full.narrow(0, pair.row_begin, tile_rows).narrow(1, pair.col_begin, tile_cols));
      } else {
        at::mm_out(gram, left.narrow(0, pair.row_begin, tile_rows), right.narrow(0, pair.col_begin, tile_cols).t());
      }
      epilogue(pair, static_cast<const scalar_t*>(buffer.data()), thread_id);
    }
  });
}

// The symmetric case: rows . rows^T.
template <typename scalar_t, typename Epilogue>
void for_each_gram_tile(const at::Tensor& rows, int64_t tile, Epilogue&& epilogue) {
  for_each_gram_tile_of<scalar_t>(rows, rows, at::Tensor(), tile, std::forward<Epilogue>(epilogue));
}

// Anchors per row block. The column side of the backward is a GEMM whose inner dimension is the
// block, and each block streams the N x D accumulator once, so larger blocks are faster (256 rows
// ran ~30% faster than 64 single-threaded at N = 2048, D = 384); smaller ones keep every thread
// busy on small batches. Per-thread buffers are 2 * block * N scalars.
inline int64_t row_block_size(int64_t n) {
  const int64_t per_thread = n / (4 * std::max(at::get_num_threads(), 1));
  return std::clamp<int64_t>(per_thread, 64, 256);
}

// Row-block formulation, for losses whose per-anchor work needs the anchor's whole distance row
// (sorting, counting against every positive). Runs `per_block(row_begin, row_end, distances,
// thread_id)` for consecutive blocks of `block` anchors, in parallel over blocks; `distances` is a
// contiguous [rows x N] block of finished distances in a per-thread buffer (block * N scalars, the
// only memory that grows with N). Every pair is computed twice (once from each side), which costs
// one full N x N x D GEMM instead of half of one, and buys a complete row per anchor.
template <typename scalar_t, typename PerBlock>
void for_each_distance_row_block(const GemmOperand& operand, DistanceKind kind, int64_t block,
                                 PerBlock&& per_block) {
  const int64_t n = operand.rows.size(0);
  const scalar_t* squared_norms =
      operand.squared_norms.defined() ? operand.squared_norms.data_ptr<scalar_t>() : nullptr;
  const int num_threads = at::get_num_threads();
  std::vector<std::vector<scalar_t>> buffers(num_threads);
  const int64_t num_blocks = (n + block - 1) / block;
  at::parallel_for(0, num_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    const int thread_id = at::get_thread_num();
    auto& buffer = buffers[thread_id];
    buffer.resize(static_cast<size_t>(std::min(block, n) * n));
    for (int64_t b = block_begin; b < block_end; ++b) {
      const int64_t row_begin = b * block;
      const int64_t row_end = std::min(row_begin + block, n);
      const int64_t rows = row_end - row_begin;
      auto gram = at::from_blob(buffer.data(), {rows, n}, operand.rows.options());
      at::mm_out(gram, operand.rows.narrow(0, row_begin, rows), operand.rows.t());
      scalar_t* values = buffer.data();
      for (int64_t a = row_begin; a < row_end; ++a) {
        scalar_t* row = values + (a - row_begin) * n;
        // finish_distance_entry's steps (pairwise_rules.h), one branch-free loop per kind so
        // that the compiler vectorises them.
        if (kind == DistanceKind::kCosine) {
          for (int64_t j = 0; j < n; ++j) row[j] = cosine_distance(row[j]);
          continue;
        }
        const scalar_t squared_norm_a = squared_norms[a];
        for (int64_t j = 0; j < n; ++j) row[j] = clamped_squared_distance(row[j], squared_norm_a, squared_norms[j]);
        if (kind == DistanceKind::kEuclidean) {
          for (int64_t j = 0; j < n; ++j) row[j] = euclidean_from_squared(row[j]);
        }
        if (self_distance_is_zero(kind)) row[a] = scalar_t(0);
      }
      per_block(row_begin, row_end, static_cast<const scalar_t*>(values), thread_id);
    }
  });
}

// Turns row a's weights W[a, :] into GEMM coefficients in place and returns the row's own
// coefficient (the sum of its self terms); column_term(j, coefficient, self_term) sees every entry.
template <typename scalar_t, typename ColumnTerm>
inline scalar_t row_coefficients(DistanceKind kind, scalar_t* c, const scalar_t* d, int64_t n, ColumnTerm&& column_term) {
  scalar_t row_sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    c[j] = pair_coefficient(kind, c[j], d[j]);
    const scalar_t self_term = pair_self_term(kind, c[j], d[j]);
    row_sum += self_term;
    column_term(j, c[j], self_term);
  }
  return row_sum;
}

// Gradient of sum_{a, j} W[a, j] * d(a, j) with respect to the embeddings, for per-pair weights W
// that are produced one block of anchor rows at a time and never stored whole.
//
// `fill_weights(row_begin, row_end, distances, weights)` receives a [rows x N] distance block
// (as for_each_distance_row_block gives it) and writes the matching [rows x N] weights. Each
// block's weights become GEMM coefficients C:
//   euclidean          C = W / d (0 where d = 0, as ST's masked sqrt), grad_a += sum_j C_aj (x_a - x_j)
//   squared euclidean  C = 2 W
//   cosine             C = W on unit rows u, grad_a += -(sum_j C_aj (u_j - cos_aj u_a)) / max(|x_a|, eps)
// and both sides of every pair are applied by two GEMMs per block: C . X for the block's own rows
// and C^T . X_block for every column, the latter into a per-thread [N x D] accumulator (rows of
// other blocks are written by other threads). Cost: the distance GEMM plus two GEMMs of the same
// size, i.e. 3 N^2 D multiply-adds in total; memory: the block buffers plus one N x D accumulator
// per thread. NaN weights (poisoned rows) propagate through the GEMMs on purpose. A block whose
// weights are sparse (at most 1 in kDenseWeightRatio nonzero, as semi-hard's always are with small
// classes) is applied pair by pair instead: the distance GEMM is then the only N^2 D work.
constexpr int64_t kDenseWeightRatio = 32;

template <typename scalar_t, typename FillWeights>
at::Tensor pair_weight_gradient(const at::Tensor& embeddings, DistanceKind kind, int64_t block,
                                FillWeights&& fill_weights) {
  const auto x = embeddings.detach().contiguous();
  const int64_t n = x.size(0);
  const int64_t dim = x.size(1);
  const GemmOperand operand = prepare_row_block_operand(x, kind, block);
  // Cosine works on unit rows; the euclidean kinds on the embeddings themselves.
  const at::Tensor& base = operand.rows;
  const int num_threads = at::get_num_threads();
  // Per thread: the sum of C . base over its pairs (both sides) and the per-row coefficient sums
  // that multiply the row itself.
  std::vector<at::Tensor> accumulators(num_threads);
  std::vector<std::vector<scalar_t>> self_coefficients(num_threads);
  std::vector<std::vector<scalar_t>> weight_buffers(num_threads);

  for_each_distance_row_block<scalar_t>(operand, kind, block, [&](int64_t row_begin, int64_t row_end,
                                                                 const scalar_t* distances,
                                                                 int thread_id) {
    const int64_t rows = row_end - row_begin;
    auto& weights = weight_buffers[thread_id];
    weights.resize(static_cast<size_t>(rows * n));
    if (!accumulators[thread_id].defined()) {
      accumulators[thread_id] = at::zeros({n, dim}, x.options());
      self_coefficients[thread_id].assign(static_cast<size_t>(n), scalar_t(0));
    }
    auto& self_coefficient = self_coefficients[thread_id];
    fill_weights(row_begin, row_end, distances, weights.data());
    int64_t nonzero = 0;
    for (int64_t a = row_begin; a < row_end; ++a) {
      self_coefficient[a] += row_coefficients(kind, weights.data() + (a - row_begin) * n, distances + (a - row_begin) * n,
                                              n, [&](int64_t j, scalar_t coefficient, scalar_t self_term) {
                                                nonzero += coefficient != scalar_t(0);
                                                self_coefficient[j] += self_term;
                                              });
    }
    auto& accumulator = accumulators[thread_id];
    if (nonzero * kDenseWeightRatio <= rows * n) {
      // Sparse weights (semi-hard: two columns per positive pair) cost O(nonzero * D) applied
      // pair by pair, against 2 rows * N * D for the GEMMs. NaN coefficients are nonzero and
      // still reach both rows.
      scalar_t* accumulated = accumulator.data_ptr<scalar_t>();
      const scalar_t* base_rows = base.data_ptr<scalar_t>();
      for (int64_t a = row_begin; a < row_end; ++a) {
        const scalar_t* c = weights.data() + (a - row_begin) * n;
        scalar_t* row_out = accumulated + a * dim;
        const scalar_t* row_in = base_rows + a * dim;
        for (int64_t j = 0; j < n; ++j) {
          const scalar_t coefficient = c[j];
          if (coefficient == scalar_t(0)) continue;
          scalar_t* column_out = accumulated + j * dim;
          const scalar_t* column_in = base_rows + j * dim;
          for (int64_t k = 0; k < dim; ++k) row_out[k] += coefficient * column_in[k];
          for (int64_t k = 0; k < dim; ++k) column_out[k] += coefficient * row_in[k];
        }
      }
    } else {
      auto coefficients = at::from_blob(weights.data(), {rows, n}, x.options());
      accumulator.narrow(0, row_begin, rows).addmm_(coefficients, base);
      accumulator.addmm_(coefficients.t(), base.narrow(0, row_begin, rows));
    }
  });

  auto self_total = at::zeros({n}, x.options());
  auto pair_total = at::zeros({n, dim}, x.options());
  for (int t = 0; t < num_threads; ++t) {
    if (!accumulators[t].defined()) continue;
    pair_total.add_(accumulators[t]);
    self_total.add_(at::from_blob(self_coefficients[t].data(), {n}, x.options()));
  }
  return finish_pair_gradient(x, base, kind, self_total, pair_total);
}

// A weight W[row, column] that a row-block pass learns while it holds the column's row, not the
// row's own: applied to the row's gradient after all blocks.
template <typename scalar_t>
struct DeferredPairWeight {
  int64_t row, column;
  scalar_t weight, distance;
};

// Gradient of sum_{a, j} W[a, j] * d(a, j), as pair_weight_gradient, for losses that can also
// write the transposed weights of a block of rows: `fill_symmetric(row_begin, row_end, distances,
// weights, deferred)` writes S[a, j] = W[a, j] + W[j, a] for the block's rows a and every column
// j, except that a W[j, a] it cannot know from row a's distances is left out and appended, when
// row j's block produces it, to `deferred` as {a, j, W[j, a], d(j, a)}. d(a, j) = d(j, a), so row a's
// gradient is then S[a, :] applied to the rows of X: ONE GEMM per block (rows x N x D) instead of
// two, and no per-thread N x D accumulator. Cost: 2 N^2 D multiply-adds in all, the distance GEMM
// included. Returns false (and no gradient) when fill_symmetric returns false for any block.
// `operand` is prepare_row_block_operand(x, kind, block), which the caller may also need.
template <typename scalar_t, typename FillSymmetric>
bool symmetric_pair_weight_gradient(const at::Tensor& x, const GemmOperand& operand, DistanceKind kind,
                                    int64_t block, FillSymmetric&& fill_symmetric, at::Tensor& gradient) {
  const int64_t n = x.size(0);
  const int64_t dim = x.size(1);
  const at::Tensor& base = operand.rows;
  const int num_threads = at::get_num_threads();
  std::vector<std::vector<DeferredPairWeight<scalar_t>>> deferred(num_threads);
  std::vector<std::vector<scalar_t>> weight_buffers(num_threads);
  auto self_total = at::zeros({n}, x.options());
  auto pair_total = at::empty({n, dim}, x.options());
  scalar_t* self_coefficient = self_total.data_ptr<scalar_t>();
  std::atomic<bool> usable{true};

  for_each_distance_row_block<scalar_t>(operand, kind, block, [&](int64_t row_begin, int64_t row_end,
                                                                 const scalar_t* distances, int thread_id) {
    if (!usable.load(std::memory_order_relaxed)) return;
    const int64_t rows = row_end - row_begin;
    auto& weights = weight_buffers[thread_id];
    weights.resize(static_cast<size_t>(rows * n));
    if (!fill_symmetric(row_begin, row_end, distances, weights.data(), deferred[thread_id])) {
      usable.store(false, std::memory_order_relaxed);
      return;
    }
    for (int64_t a = row_begin; a < row_end; ++a) {
      self_coefficient[a] = row_coefficients(kind, weights.data() + (a - row_begin) * n, distances + (a - row_begin) * n,
                                             n, [](int64_t, scalar_t, scalar_t) {});
    }
    auto rows_out = pair_total.narrow(0, row_begin, rows);
    at::mm_out(rows_out, at::from_blob(weights.data(), {rows, n}, x.options()), base);
  });
  if (!usable.load()) return false;

  const scalar_t* base_rows = base.data_ptr<scalar_t>();
  scalar_t* pair_rows = pair_total.data_ptr<scalar_t>();
  for (const auto& entries : deferred) {
    for (const auto& entry : entries) {
      const scalar_t coefficient = pair_coefficient(kind, entry.weight, entry.distance);
      self_coefficient[entry.row] += pair_self_term(kind, coefficient, entry.distance);
      scalar_t* out = pair_rows + entry.row * dim;
      const scalar_t* in = base_rows + entry.column * dim;
      for (int64_t k = 0; k < dim; ++k) out[k] += coefficient * in[k];
    }
  }
  gradient = finish_pair_gradient(x, base, kind, self_total, pair_total);
  return true;
}

// Whether a row holds NaN or +-Inf. A comparison per entry OR-ed into a flag vectorises; the
// obvious early-exit loop does not.
template <typename scalar_t>
inline bool has_non_finite(const scalar_t* row, int64_t n) {
  bool non_finite = false;
  for (int64_t j = 0; j < n; ++j) non_finite |= is_non_finite(row[j]);
  return non_finite;
}

inline void check_cpu_embeddings_and_labels(const at::Tensor& embeddings, const at::Tensor& labels) {
  check_embeddings_and_labels(embeddings, labels, "CPU");
  TORCH_CHECK(embeddings.device().is_cpu(), "embedplug: the CPU kernel got a non-CPU tensor");
}

// Backward shared by the per-anchor losses (batch-all, semi-hard): gradient of
// sum(grad_sums * loss_sums) w.r.t. embeddings. The losses weight every anchor alike, so when the
// forward already computed the unit gradient this is one scale; otherwise the rows and per-pair
// weights are recomputed block by block with the anchor routine `Anchor<scalar_t>`, whose
// `process(distances_row, a, grad, weights_row)` is the forward's with weights switched on.
template <template <typename> class Anchor>
at::Tensor per_anchor_loss_backward(const at::Tensor& grad_sums, const at::Tensor& embeddings,
                                    const at::Tensor& labels, const at::Tensor& unit_grad,
                                    c10::string_view distance, double margin) {
  check_cpu_embeddings_and_labels(embeddings, labels);
  TORCH_CHECK(grad_sums.dim() == 1 && grad_sums.size(0) == embeddings.size(0), "embedplug: grad_sums must be [N]");
  if (unit_grad.numel() > 0) {
    TORCH_CHECK(unit_grad.sizes() == embeddings.sizes(), "embedplug: unit_grad must be empty or [N, D]");
    if (uniform_gradient(grad_sums)) return unit_grad * grad_sums[0].to(unit_grad.scalar_type());
  }
  const DistanceKind kind = parse_distance(std::string_view(distance.data(), distance.size()));
  const int64_t n = embeddings.size(0);
  const auto labels_contiguous = labels.contiguous();
  const int64_t* label_ptr = labels_contiguous.data_ptr<int64_t>();
  const ClassMembers classes(label_ptr, n);
  at::Tensor grad;
  AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "per_anchor_loss_backward", [&] {
    const auto grad_per_anchor = grad_sums.detach().to(embeddings.scalar_type()).contiguous();
    const scalar_t* grad_ptr = grad_per_anchor.data_ptr<scalar_t>();
    const Anchor<scalar_t> prototype{label_ptr, &classes, n, static_cast<scalar_t>(margin)};
    grad = pair_weight_gradient<scalar_t>(
        embeddings.detach(), kind, row_block_size(n),
        [&](int64_t row_begin, int64_t row_end, const scalar_t* distances, scalar_t* weights) {
          Anchor<scalar_t> anchor = prototype;
          std::fill(weights, weights + (row_end - row_begin) * n, scalar_t(0));
          for (int64_t a = row_begin; a < row_end; ++a) {
            if (grad_ptr[a] == scalar_t(0)) continue;
            const int64_t offset = (a - row_begin) * n;
            anchor.process(distances + offset, a, grad_ptr[a], weights + offset);
          }
        });
  });
  return grad;
}

}  // namespace cpu
}  // namespace embedplug
