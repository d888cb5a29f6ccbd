// CUDA twin of csrc/cpu/hardest_negative_kernel.cpp: per block of anchor rows one cuBLAS GEMM
// (at::mm_out on the current stream) into a reused rows x M buffer bounded by row_block_size(), then
// an epilogue kernel, one thread block per row, folding the row into a running maximum with the rules
// of csrc/hardest_negative_rules.h and merging the threads' maxima with cub::BlockReduce. No atomics:
// deterministic, and equal to the CPU kernel (both use torch.max's tie order).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include <limits>

#include "op_input_checks.h"
#include "cuda/cuda_common.cuh"
#include "hardest_negative_rules.h"

namespace embedplug {
namespace cuda {
namespace {

template <typename scalar_t>
struct KeepBetter {
  __device__ ArgExtreme<scalar_t> operator()(const ArgExtreme<scalar_t>& a, const ArgExtreme<scalar_t>& b) const {
    return merge_max<hardest_negative::kRowMaxNan>(a, b);
  }
};

template <typename scalar_t>
__global__ void hardest_off_diagonal_epilogue(const scalar_t* __restrict__ similarities, int64_t row_begin,
                                              int64_t columns, scalar_t* __restrict__ out_values,
                                              int64_t* __restrict__ out_indices) {
  using BlockReduce = cub::BlockReduce<ArgExtreme<scalar_t>, kThreadsPerBlock>;
  __shared__ typename BlockReduce::TempStorage temp_storage;
  const int64_t local_row = blockIdx.x;
  const int64_t row = row_begin + local_row;
  const scalar_t* similarity = similarities + local_row * columns;
  ArgExtreme<scalar_t> best = empty_argmax<scalar_t>();
  for (int64_t column = threadIdx.x; column < columns; column += blockDim.x) {
    if (hardest_negative::is_negative(row, column)) hardest_negative::keep(best, similarity[column], column);
  }
  const ArgExtreme<scalar_t> row_best = BlockReduce(temp_storage).Reduce(best, KeepBetter<scalar_t>());
  if (threadIdx.x == 0) {
    out_values[row] = row_best.value;
    out_indices[row] = hardest_negative::output_index(row_best);
  }
}

std::tuple<at::Tensor, at::Tensor> hardest_off_diagonal_similarity_cuda(const at::Tensor& anchors_in,
                                                                        const at::Tensor& candidates_in) {
  check_floating_inputs("hardest_off_diagonal_similarity", {{"anchors", &anchors_in}, {"candidates", &candidates_in}});
  check_same_cuda_device("hardest_off_diagonal_similarity", {{"anchors", &anchors_in}, {"candidates", &candidates_in}});
  TORCH_CHECK(anchors_in.dim() == 2 && candidates_in.dim() == 2,
              "embedplug::hardest_off_diagonal_similarity: anchors [N, D] and candidates [M, D] must be 2-D");
  TORCH_CHECK(anchors_in.size(1) == candidates_in.size(1),
              "embedplug::hardest_off_diagonal_similarity: anchors and candidates must have the same embedding "
              "dimension, got ", anchors_in.size(1), " and ", candidates_in.size(1));
  TORCH_CHECK(anchors_in.scalar_type() == candidates_in.scalar_type(),
              "embedplug::hardest_off_diagonal_similarity: anchors and candidates must have one dtype");
  TORCH_CHECK(anchors_in.scalar_type() == at::kFloat || anchors_in.scalar_type() == at::kDouble,
              "embedplug::hardest_off_diagonal_similarity: the kernel takes float32 or float64, got ",
              anchors_in.scalar_type());
  const at::cuda::CUDAGuard guard(anchors_in.device());
  const auto anchors = anchors_in.contiguous();
  const auto candidates = candidates_in.contiguous();
  const int64_t n = anchors.size(0);
  const int64_t m = candidates.size(0);
  auto values = at::empty({n}, anchors.options());
  auto indices = at::empty({n}, anchors.options().dtype(at::kLong));
  if (n == 0) return {values, indices};
  if (m == 0) {
    values.fill_(-std::numeric_limits<double>::infinity());
    indices.fill_(-1);
    return {values, indices};
  }
  const int64_t block = row_block_size(n, m);
  auto buffer = at::empty({block, m}, anchors.options());
  const auto candidates_t = candidates.t();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(anchors.scalar_type(), "hardest_off_diagonal_similarity_cuda", [&] {
    for (int64_t row_begin = 0; row_begin < n; row_begin += block) {
      const int64_t rows = std::min(block, n - row_begin);
      auto similarities = buffer.narrow(0, 0, rows);
      at::mm_out(similarities, anchors.narrow(0, row_begin, rows), candidates_t);
      hardest_off_diagonal_epilogue<scalar_t><<<static_cast<unsigned int>(rows), kThreadsPerBlock, 0, stream>>>(
          similarities.data_ptr<scalar_t>(), row_begin, m, values.data_ptr<scalar_t>(),
          indices.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {values, indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(embedplug, CUDA, m) {
  m.impl("hardest_off_diagonal_similarity", &hardest_off_diagonal_similarity_cuda);
}

}  // namespace cuda
}  // namespace embedplug
