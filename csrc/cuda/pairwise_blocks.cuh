// The row-block machinery of the batch-mining family on CUDA (batch-all, semi-hard; batch-hard
// uses the GEMM and the reductions only): per block of anchor rows, one cuBLAS GEMM into a reused
// [rows x N] buffer, an epilogue kernel with one thread block per row, and for the gradient the
// pair weights applied by two more GEMMs. Every rule the kernels apply comes from
// pairwise_rules.h (shared with the CPU kernels); nothing here decides a loss on its own. No
// floating-point atomics: every sum has a fixed order, so results repeat run to run.
#pragma once

#include <ATen/ATen.h>
#include <cub/block/block_reduce.cuh>

#include <cstdint>

#include "cuda/cuda_common.cuh"
#include "op_input_checks.h"
#include "pairwise_common.h"
#include "pairwise_rules.h"

namespace embedplug {
namespace cuda {

// Squared norms of the row-block kernels come from the diagonal of Gram blocks of this many rows
// (prepare_row_block_operand): ST takes them from its Gram diagonal. A small block keeps that
// extra GEMM work at block / N of the distance GEMM.
inline constexpr int64_t kNormBlockRows = 256;

// The label grouping on the device: members[class_begin[a] .. class_end[a]) are a's class in index
// order and class_rank[a] is a's own position in it, so that positive k of anchor a is
// members[class_begin[a] + k + (k >= class_rank[a])].
struct DeviceClasses {
  at::Tensor members, class_begin, class_end, class_rank;  // int64 [N] on the labels' device
};

struct ClassView {
  const int64_t* members;
  const int64_t* class_begin;
  const int64_t* class_end;
  const int64_t* class_rank;

  __device__ inline int64_t num_positives(int64_t anchor) const {
    return class_end[anchor] - class_begin[anchor] - 1;
  }
  __device__ inline int64_t positive(int64_t anchor, int64_t k) const {
    return members[class_begin[anchor] + k + (k >= class_rank[anchor] ? 1 : 0)];
  }
  __device__ inline int64_t first_member(int64_t anchor) const { return members[class_begin[anchor]]; }
};

// Built on the host (one copy of the labels, N int64) with the CPU kernels' ClassMembers, so that
// both backends group labels identically.
inline DeviceClasses device_classes(const at::Tensor& labels) {
  const auto host_labels = labels.to(at::kCPU).contiguous();
  const int64_t n = host_labels.size(0);
  const ClassMembers classes(host_labels.data_ptr<int64_t>(), n);
  auto host = at::empty({4, n}, host_labels.options());
  int64_t* out = host.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    out[i] = classes.members[i];
    out[n + i] = classes.class_begin[i];
    out[2 * n + i] = classes.class_end[i];
    out[3 * n + classes.members[i]] = i - classes.class_begin[classes.members[i]];
  }
  const auto device = host.to(labels.device());
  return {device[0], device[1], device[2], device[3]};
}

inline ClassView class_view(const DeviceClasses& classes) {
  return {classes.members.data_ptr<int64_t>(), classes.class_begin.data_ptr<int64_t>(),
          classes.class_end.data_ptr<int64_t>(), classes.class_rank.data_ptr<int64_t>()};
}

// cub::BlockReduce operators for the arg-extreme total order.
struct MergeMin {
  template <typename T>
  __device__ inline T operator()(const T& a, const T& b) const {
    return merge_min(a, b);
  }
};
struct MergeMax {
  template <typename T>
  __device__ inline T operator()(const T& a, const T& b) const {
    return merge_max(a, b);
  }
};

// Gram block [rows x N] (rows starting at row_begin) -> distances in place, finish_distance_entry.
template <typename scalar_t>
__global__ void finish_distances_kernel(scalar_t* __restrict__ block, const scalar_t* __restrict__ squared_norms,
                                        DistanceKind kind, int64_t row_begin, int64_t n) {
  const int64_t a = row_begin + blockIdx.x;
  scalar_t* row = block + static_cast<int64_t>(blockIdx.x) * n;
  const scalar_t squared_norm_a = squared_norms ? squared_norms[a] : scalar_t(0);
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const scalar_t squared_norm_j = squared_norms ? squared_norms[j] : scalar_t(0);
    row[j] = finish_distance_entry(kind, row[j], squared_norm_a, squared_norm_j, a, j);
  }
}

// Weights W -> GEMM coefficients C in place (pair_coefficient), and each row's own coefficient
// sum (pair_self_term) added to self_total[a]. One thread block per row.
template <typename scalar_t>
__global__ void row_coefficients_kernel(scalar_t* __restrict__ weights, const scalar_t* __restrict__ distances,
                                        scalar_t* __restrict__ self_total, DistanceKind kind, int64_t row_begin,
                                        int64_t n) {
  using BlockReduce = cub::BlockReduce<scalar_t, kThreadsPerBlock>;
  __shared__ typename BlockReduce::TempStorage storage;
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * n;
  scalar_t row_sum = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const scalar_t coefficient = pair_coefficient(kind, weights[offset + j], distances[offset + j]);
    weights[offset + j] = coefficient;
    row_sum += pair_self_term(kind, coefficient, distances[offset + j]);
  }
  const scalar_t total = BlockReduce(storage).Sum(row_sum);
  if (threadIdx.x == 0) self_total[row_begin + blockIdx.x] += total;
}

// The column side of the self coefficients: self_total[j] += sum over the block's rows a (in
// order) of pair_self_term(C[a, j], d(a, j)). One thread per column.
template <typename scalar_t>
__global__ void column_self_terms_kernel(const scalar_t* __restrict__ coefficients,
                                         const scalar_t* __restrict__ distances, scalar_t* __restrict__ self_total,
                                         DistanceKind kind, int64_t rows, int64_t n) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= n) return;
  scalar_t sum = 0;
  for (int64_t a = 0; a < rows; ++a) sum += pair_self_term(kind, coefficients[a * n + j], distances[a * n + j]);
  self_total[j] += sum;
}

// GEMM of rows [row_begin, row_begin + rows) against all rows into `gram` ([rows x N] view of a
// reused buffer), finished into distances.
template <typename scalar_t>
void distance_row_block(const GemmOperand& operand, DistanceKind kind, int64_t row_begin, int64_t rows,
                        at::Tensor& gram) {
  const int64_t n = operand.rows.size(0);
  at::mm_out(gram, operand.rows.narrow(0, row_begin, rows), operand.rows.t());
  const scalar_t* squared_norms =
      operand.squared_norms.defined() ? operand.squared_norms.template data_ptr<scalar_t>() : nullptr;
  finish_distances_kernel<scalar_t><<<static_cast<unsigned>(rows), kThreadsPerBlock, 0,
                                      at::cuda::getCurrentCUDAStream()>>>(gram.template data_ptr<scalar_t>(),
                                                                          squared_norms, kind, row_begin, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Runs `per_block(row_begin, rows, distances)` over consecutive row blocks; `distances` is a
// contiguous [rows x N] tensor of finished distances in one reused buffer.
template <typename scalar_t, typename PerBlock>
void for_each_distance_row_block(const GemmOperand& operand, DistanceKind kind, PerBlock&& per_block) {
  const int64_t n = operand.rows.size(0);
  const int64_t block = row_block_size(n, n);
  auto buffer = at::empty({block, n}, operand.rows.options());
  for (int64_t row_begin = 0; row_begin < n; row_begin += block) {
    const int64_t rows = std::min(block, n - row_begin);
    auto distances = buffer.narrow(0, 0, rows);
    distance_row_block<scalar_t>(operand, kind, row_begin, rows, distances);
    per_block(row_begin, rows, distances);
  }
}

// Gradient of sum_{a, j} W[a, j] d(a, j) w.r.t. x, for weights W produced one row block at a time
// by `fill_weights(row_begin, rows, distances, weights)` (it launches the loss's epilogue kernel,
// which writes every entry of the [rows x N] weights). Per block: C = pair_coefficient(W), the
// self coefficients row- and column-wise, then pair_total[block] += C . base and
// pair_total += C^T . base[block] (two GEMMs), as the CPU kernels' pair_weight_gradient; memory is
// two [block x N] buffers and the [N x D] result. `operand` is prepare_row_block_operand(x).
template <typename scalar_t, typename FillWeights>
at::Tensor pair_weight_gradient(const at::Tensor& x, const GemmOperand& operand, DistanceKind kind,
                                FillWeights&& fill_weights) {
  const int64_t n = x.size(0);
  const at::Tensor& base = operand.rows;
  const int64_t block = row_block_size(n, n, /*buffers_per_row=*/2);
  auto distance_buffer = at::empty({block, n}, base.options());
  auto weight_buffer = at::empty({block, n}, base.options());
  auto self_total = at::zeros({n}, base.options());
  auto pair_total = at::zeros_like(base);
  const auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t row_begin = 0; row_begin < n; row_begin += block) {
    const int64_t rows = std::min(block, n - row_begin);
    auto distances = distance_buffer.narrow(0, 0, rows);
    auto weights = weight_buffer.narrow(0, 0, rows);
    distance_row_block<scalar_t>(operand, kind, row_begin, rows, distances);
    fill_weights(row_begin, rows, distances, weights);
    row_coefficients_kernel<scalar_t><<<static_cast<unsigned>(rows), kThreadsPerBlock, 0, stream>>>(
        weights.template data_ptr<scalar_t>(), distances.template data_ptr<scalar_t>(),
        self_total.template data_ptr<scalar_t>(), kind, row_begin, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    column_self_terms_kernel<scalar_t><<<static_cast<unsigned>(ceil_div(n, kThreadsPerBlock)), kThreadsPerBlock, 0,
                                         stream>>>(weights.template data_ptr<scalar_t>(),
                                                   distances.template data_ptr<scalar_t>(),
                                                   self_total.template data_ptr<scalar_t>(), kind, rows, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    pair_total.narrow(0, row_begin, rows).addmm_(weights, base);
    pair_total.addmm_(weights.t(), base.narrow(0, row_begin, rows));
  }
  return finish_pair_gradient(x, base, kind, self_total, pair_total);
}

// Input checks of the per-anchor loss and mining kernels on CUDA.
inline void check_cuda_embeddings_and_labels(const char* op, const at::Tensor& embeddings, const at::Tensor& labels) {
  check_floating_inputs(op, {{"embeddings", &embeddings}});
  check_int64_input(op, "labels", labels);
  check_embeddings_and_labels(embeddings, labels, "CUDA");
  check_same_cuda_device(op, {{"embeddings", &embeddings}, {"labels", &labels}});
}

// Backward shared by the per-anchor losses (batch-all, semi-hard), as the CPU kernels'
// per_anchor_loss_backward: the gradient of sum(grad_sums * loss_sums) w.r.t. embeddings. A uniform
// incoming gradient rescales the forward's unit gradient; any other recomputes the row blocks, where
// `launch_weights(distances, labels, classes, grads, row_begin, weights)` is the loss's epilogue
// launch with weights switched on (a generic lambda: its pointer arguments carry scalar_t).
template <typename LaunchWeights>
at::Tensor per_anchor_loss_backward(const char* op, const at::Tensor& grad_sums, const at::Tensor& embeddings,
                                    const at::Tensor& labels, const at::Tensor& unit_grad, c10::string_view distance,
                                    LaunchWeights&& launch_weights) {
  check_cuda_embeddings_and_labels(op, embeddings, labels);
  check_same_cuda_device(op, {{"embeddings", &embeddings}, {"grad_sums", &grad_sums}, {"unit_grad", &unit_grad}});
  TORCH_CHECK(grad_sums.dim() == 1 && grad_sums.size(0) == embeddings.size(0), "embedplug: grad_sums must be [N]");
  const at::cuda::CUDAGuard guard(embeddings.device());
  if (unit_grad.numel() > 0) {
    TORCH_CHECK(unit_grad.sizes() == embeddings.sizes(), "embedplug: unit_grad must be empty or [N, D]");
    if (uniform_gradient(grad_sums)) return unit_grad * grad_sums[0].to(unit_grad.scalar_type());
  }
  const DistanceKind kind = parse_distance(std::string_view(distance.data(), distance.size()));
  const auto labels_contiguous = labels.contiguous();
  const DeviceClasses classes = device_classes(labels_contiguous);
  at::Tensor grad;
  AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "per_anchor_loss_backward_cuda", [&] {
    const auto x = embeddings.detach().contiguous();
    const auto grad_per_anchor = grad_sums.detach().to(x.scalar_type()).contiguous();
    const scalar_t* grads = grad_per_anchor.data_ptr<scalar_t>();
    const GemmOperand operand = prepare_row_block_operand(x, kind, kNormBlockRows);
    grad = pair_weight_gradient<scalar_t>(
        x, operand, kind, [&](int64_t row_begin, int64_t, const at::Tensor& block, at::Tensor& weights) {
          launch_weights(block, labels_contiguous, classes, grads, row_begin, weights.data_ptr<scalar_t>());
        });
  });
  return grad;
}

}  // namespace cuda
}  // namespace embedplug
