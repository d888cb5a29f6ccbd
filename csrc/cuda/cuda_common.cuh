// What every CUDA kernel file in csrc/cuda shares: input checks, the device guard, the bounded
// row-block size, and launch helpers. The math itself (distance finish, masks, tie order, online
// log-sum-exp, GIST predicate) lives in the host/device rule headers under csrc/, shared with the
// CPU kernels; nothing here computes a loss.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <string>

namespace embedplug {
namespace cuda {

// One thread block per row in the epilogue kernels; 256 threads keep an H100/H200 SM busy with a
// few resident blocks and make the CUB block reductions a single pass over 8 warps.
inline constexpr int kThreadsPerBlock = 256;

// Upper bound on the scalars of one GEMM output buffer (row block x all columns). 2^25 float32
// is 128 MiB: small next to the embeddings at the batch sizes where fusion matters (N >= 8K) and
// large enough that each cuBLAS call is a few GFLOP, i.e. at its roofline.
inline constexpr int64_t kMaxBufferScalars = int64_t(1) << 25;

// Rows per block so that `rows * columns * buffers_per_row` scalars stay under kMaxBufferScalars.
inline int64_t row_block_size(int64_t rows, int64_t columns, int64_t buffers_per_row = 1) {
  const int64_t per_row = std::max<int64_t>(columns * buffers_per_row, 1);
  const int64_t fit = std::max<int64_t>(kMaxBufferScalars / per_row, 1);
  return std::max<int64_t>(std::min<int64_t>(rows, fit), 1);
}

// Every tensor an op takes must be on the device of the first one; the message names both.
inline void check_same_cuda_device(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors) {
  const at::Tensor* first = nullptr;
  const char* first_name = nullptr;
  for (const auto& [name, tensor] : tensors) {
    if (tensor == nullptr || !tensor->defined()) continue;
    TORCH_CHECK(tensor->is_cuda(), "embedplug::", op, ": ", name, " is on ", tensor->device(),
                " but the CUDA kernel was called; move every input to one CUDA device");
    if (first == nullptr) {
      first = tensor;
      first_name = name;
      continue;
    }
    TORCH_CHECK(tensor->device() == first->device(), "embedplug::", op, ": ", name, " is on ", tensor->device(),
                " but ", first_name, " is on ", first->device(), "; move every input to one device");
  }
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace cuda
}  // namespace embedplug
