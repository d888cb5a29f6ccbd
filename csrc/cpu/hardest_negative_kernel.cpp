// Hardest off-diagonal similarity per anchor, fused with the similarity GEMM (FAISS/KeOps style): one
// BLAS GEMM per (row block x column tile) into a per-thread buffer, then an epilogue that folds the
// tile into each row's running maximum (csrc/hardest_negative_rules.h). Memory is one tile per
// thread; the N x M similarity matrix never exists. Rows are independent, so blocks of rows run in
// parallel and each row's columns are scanned left to right: deterministic, torch.max's tie order.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "op_input_checks.h"
#include "hardest_negative_rules.h"

namespace embedplug {
namespace cpu {
namespace {

constexpr int64_t kRowBlock = 64;
// 64 x 2048 fp32 tile = 512 KiB: stays in L2 for the epilogue pass.
constexpr int64_t kColumnTile = 2048;

void check_inputs(const at::Tensor& anchors, const at::Tensor& candidates) {
  check_floating_inputs("hardest_off_diagonal_similarity", {{"anchors", &anchors}, {"candidates", &candidates}});
  TORCH_CHECK(anchors.dim() == 2, "embedplug::hardest_off_diagonal_similarity: anchors must be 2-D [N, D], got ",
              anchors.dim(), "-D");
  TORCH_CHECK(candidates.dim() == 2,
              "embedplug::hardest_off_diagonal_similarity: candidates must be 2-D [M, D], got ", candidates.dim(),
              "-D");
  TORCH_CHECK(anchors.size(1) == candidates.size(1),
              "embedplug::hardest_off_diagonal_similarity: anchors and candidates must have the same embedding "
              "dimension, got ", anchors.size(1), " and ", candidates.size(1));
  TORCH_CHECK(anchors.scalar_type() == candidates.scalar_type(),
              "embedplug::hardest_off_diagonal_similarity: anchors and candidates must have one dtype, got ",
              anchors.scalar_type(), " and ", candidates.scalar_type());
  TORCH_CHECK(anchors.scalar_type() == at::kFloat || anchors.scalar_type() == at::kDouble,
              "embedplug::hardest_off_diagonal_similarity: the kernel takes float32 or float64, got ",
              anchors.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> hardest_off_diagonal_similarity_cpu(const at::Tensor& anchors_in,
                                                                       const at::Tensor& candidates_in) {
  check_inputs(anchors_in, candidates_in);
  const auto anchors = anchors_in.contiguous();
  const auto candidates = candidates_in.contiguous();
  const int64_t n = anchors.size(0);
  const int64_t m = candidates.size(0);
  auto values = at::empty({n}, anchors.options());
  auto indices = at::empty({n}, anchors.options().dtype(at::kLong));
  if (n == 0) return {values, indices};
  AT_DISPATCH_FLOATING_TYPES(anchors.scalar_type(), "hardest_off_diagonal_similarity_cpu", [&] {
    scalar_t* out_values = values.data_ptr<scalar_t>();
    int64_t* out_indices = indices.data_ptr<int64_t>();
    const int64_t tile = std::max<int64_t>(std::min(kColumnTile, m), 1);
    const int64_t num_blocks = (n + kRowBlock - 1) / kRowBlock;
    at::parallel_for(0, num_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
      std::vector<scalar_t> buffer(static_cast<size_t>(kRowBlock * tile));
      std::vector<ArgExtreme<scalar_t>> best(kRowBlock);
      for (int64_t b = block_begin; b < block_end; ++b) {
        const int64_t row_begin = b * kRowBlock;
        const int64_t rows = std::min(kRowBlock, n - row_begin);
        for (int64_t r = 0; r < rows; ++r) best[r] = empty_argmax<scalar_t>();
        const auto anchor_rows = anchors.narrow(0, row_begin, rows);
        for (int64_t column_begin = 0; column_begin < m; column_begin += tile) {
          const int64_t columns = std::min(tile, m - column_begin);
          auto similarities = at::from_blob(buffer.data(), {rows, columns}, anchors.options());
          at::mm_out(similarities, anchor_rows, candidates.narrow(0, column_begin, columns).t());
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t row = row_begin + r;
            const scalar_t* similarity = buffer.data() + r * columns;
            for (int64_t c = 0; c < columns; ++c) {
              const int64_t column = column_begin + c;
              if (hardest_negative::is_negative(row, column)) hardest_negative::keep(best[r], similarity[c], column);
            }
          }
        }
        for (int64_t r = 0; r < rows; ++r) {
          out_values[row_begin + r] = best[r].value;
          out_indices[row_begin + r] = hardest_negative::output_index(best[r]);
        }
      }
    });
  });
  return {values, indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(embedplug, CPU, m) {
  m.impl("hardest_off_diagonal_similarity", &hardest_off_diagonal_similarity_cpu);
}

}  // namespace cpu
}  // namespace embedplug
