// Shared by the CUDA masked in-batch softmax (InfoNCE) kernels (masked_infonce_kernel.cu,
// masked_infonce_mean_kernel.cu): the checked problem, the guide's thresholds and norms on the
// device, and the strip schedule. Per strip of anchor rows, one cuBLAS GEMM (at::mm_out, current
// stream) per column group writes the strip's similarities against all of the group's columns into
// a bounded, reused buffer (and one per group for a separate guide); an epilogue kernel, one thread
// block per row, turns them into masked logits through the rules in infonce_rules.h (the same
// functions the CPU kernels call) and reduces each row with CUB. Gradients are two GEMMs per group
// on the strip's softmax weights: the row side (weights x columns) and the column side
// (weights^T x rows), accumulated strip after strip on one stream: no atomics, deterministic.
// Memory: rows_per_strip x (all columns) scalars, never N x M.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <cub/block/block_reduce.cuh>

#include <optional>

#include "masked_infonce_host.h"
#include "op_input_checks.h"
#include "cuda/block_reduce.cuh"
#include "cuda/cuda_common.cuh"
#include "infonce_rules.h"

namespace embedplug {
namespace cuda {
namespace infonce_strips {

using embedplug::infonce_host::InfoNCEInputs;
using embedplug::infonce_host::InfoNCEOptions;
using embedplug::infonce::MarginStrategy;
using embedplug::infonce::RunningLogSumExp;
using embedplug::infonce::SoftmaxBlock;
using embedplug::infonce::SoftmaxBlockList;
using embedplug::cuda::reduce_row_state;

// What every CUDA masked InfoNCE op starts from, as on CPU (cpu::infonce::make_problem): checked
// options, contiguous detached inputs and the column groups of a row.
struct CudaInfoNCEProblem {
  InfoNCEOptions options;
  InfoNCEInputs inputs;
  SoftmaxBlockList blocks;
};

inline const at::Tensor* optional_pointer(const std::optional<at::Tensor>& tensor) {
  return tensor.has_value() ? &*tensor : nullptr;
}

inline CudaInfoNCEProblem make_cuda_problem(const char* op, const at::Tensor& anchors, const at::Tensor& candidates,
                                            const std::optional<at::Tensor>& guide_anchors,
                                            const std::optional<at::Tensor>& guide_candidates, double scale,
                                            c10::string_view margin_strategy, double margin, bool anchor_anchor,
                                            bool positive_anchor, int64_t positive_candidate_columns,
                                            bool exclude_self) {
  check_same_cuda_device(op, {{"anchors", &anchors},
                              {"candidates", &candidates},
                              {"guide_anchors", optional_pointer(guide_anchors)},
                              {"guide_candidates", optional_pointer(guide_candidates)}});
  TORCH_CHECK_TYPE(anchors.scalar_type() == at::kFloat || anchors.scalar_type() == at::kDouble,
                   "embedplug::", op, ": anchors must be float32 or float64, got ", anchors.scalar_type(),
                   " (embedplug.ops upcasts float16/bfloat16 to float32 before calling the op)");
  CudaInfoNCEProblem problem;
  problem.options = {scale,
                     infonce_host::parse_margin_strategy(margin_strategy),
                     margin,
                     anchor_anchor,
                     positive_anchor,
                     positive_candidate_columns,
                     exclude_self};
  infonce_host::check_inputs(anchors, candidates, guide_anchors, guide_candidates, problem.options);
  problem.inputs = infonce_host::prepare_inputs(anchors, candidates, guide_anchors, guide_candidates, problem.options);
  problem.blocks = embedplug::infonce::softmax_blocks(anchor_anchor, positive_anchor, positive_candidate_columns,
                                                      exclude_self, problem.inputs.n, problem.inputs.m);
  return problem;
}

// ---------------------------------------------------------------------------------------------
// The guide on the device: thresholds and norms (cpu::infonce::make_guide_state's).

template <typename scalar_t>
struct DeviceGuide {
  const scalar_t* anchors = nullptr;     // [N, Dg]
  const scalar_t* candidates = nullptr;  // [M, Dg]
  int64_t dim = 0;
  const scalar_t* threshold = nullptr;       // [N]
  const scalar_t* anchor_norm = nullptr;     // [N]
  const scalar_t* candidate_norm = nullptr;  // [M]
  const scalar_t* max_norms = nullptr;       // [2]: largest anchor norm, largest candidate norm
  scalar_t relative_tolerance = 0;
};

// One thread per row: the exact (sequential, unfused) dot products, as the CPU computes them.
template <typename scalar_t>
__global__ void guide_state_kernel(const scalar_t* __restrict__ guide_anchors,
                                   const scalar_t* __restrict__ guide_candidates, int64_t n, int64_t m, int64_t dim,
                                   MarginStrategy strategy, scalar_t margin, scalar_t* __restrict__ threshold,
                                   scalar_t* __restrict__ anchor_norm, scalar_t* __restrict__ candidate_norm) {
  using embedplug::infonce::exact_dot;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r < n) {
    const scalar_t* anchor = guide_anchors + r * dim;
    anchor_norm[r] = std::sqrt(exact_dot(anchor, anchor, dim));
    threshold[r] = embedplug::infonce::guide_threshold(strategy, exact_dot(anchor, guide_candidates + r * dim, dim),
                                                       margin);
  }
  if (r < m) {
    const scalar_t* candidate = guide_candidates + r * dim;
    candidate_norm[r] = std::sqrt(exact_dot(candidate, candidate, dim));
  }
}

// Keeps the device tensors behind a DeviceGuide alive.
template <typename scalar_t>
struct GuideTensors {
  at::Tensor threshold, anchor_norm, candidate_norm, max_norms;
  DeviceGuide<scalar_t> view;
};

template <typename scalar_t>
GuideTensors<scalar_t> make_device_guide(const InfoNCEInputs& inputs, const InfoNCEOptions& options) {
  GuideTensors<scalar_t> guide;
  if (!inputs.guided) return guide;
  const int64_t n = inputs.n, m = inputs.m, dim = inputs.guide_anchors.size(1);
  const auto tensor_options = inputs.anchors.options();
  guide.threshold = at::empty({n}, tensor_options);
  guide.anchor_norm = at::empty({n}, tensor_options);
  guide.candidate_norm = at::empty({m}, tensor_options);
  const int threads = kThreadsPerBlock;
  const auto blocks = static_cast<unsigned int>(ceil_div(std::max(n, m), threads));
  guide_state_kernel<scalar_t><<<blocks, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
      inputs.guide_anchors.data_ptr<scalar_t>(), inputs.guide_candidates.data_ptr<scalar_t>(), n, m, dim,
      options.strategy, static_cast<scalar_t>(options.margin), guide.threshold.template data_ptr<scalar_t>(),
      guide.anchor_norm.template data_ptr<scalar_t>(), guide.candidate_norm.template data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Maxima are exact whatever the reduction order; they stay on the device (no host sync).
  guide.max_norms = at::stack({infonce_host::nan_ignoring_maximum(guide.anchor_norm),
                               infonce_host::nan_ignoring_maximum(guide.candidate_norm)});
  scalar_t tolerance = embedplug::infonce::gemm_relative_tolerance<scalar_t>(dim);
  if (std::is_same_v<scalar_t, float> && at::globalContext().allowTF32CuBLAS()) {
    // TF32 GEMMs round each input to a 10-bit mantissa (unit roundoff 2^-11): their error on <x, y>
    // is below 2 * 2^-11 * |x| |y| on top of the float32 accumulation; twice that keeps the band safe.
    tolerance += scalar_t(4) * scalar_t(1.0 / 2048.0);
  }
  guide.view = {inputs.guide_anchors.data_ptr<scalar_t>(),
                inputs.guide_candidates.data_ptr<scalar_t>(),
                dim,
                guide.threshold.template data_ptr<scalar_t>(),
                guide.anchor_norm.template data_ptr<scalar_t>(),
                guide.candidate_norm.template data_ptr<scalar_t>(),
                guide.max_norms.template data_ptr<scalar_t>(),
                tolerance};
  return guide;
}

// ---------------------------------------------------------------------------------------------
// The strip: rows [row_begin, row_begin + rows) against every column of every group.

// Host-side layout of a strip buffer: segment b holds group b's [rows, num_columns] similarities,
// row-major, at offset rows * block_offset[b] (the CPU mean kernel's layout).
struct StripLayout {
  SoftmaxBlockList blocks;
  int64_t block_offset[embedplug::infonce::kMaxSoftmaxBlocks];
  int64_t total_columns;
  int64_t rows_per_strip;
};

inline StripLayout make_strip_layout(const SoftmaxBlockList& blocks, int64_t n, bool separate_guide) {
  StripLayout layout{};
  layout.blocks = blocks;
  layout.total_columns = 0;
  for (int b = 0; b < blocks.count; ++b) {
    layout.block_offset[b] = layout.total_columns;
    layout.total_columns += blocks.blocks[b].num_columns;
  }
  layout.rows_per_strip = row_block_size(n, layout.total_columns, separate_guide ? 2 : 1);
  return layout;
}

// What the epilogue kernels read: the strip's buffers, its layout and the guide.
template <typename scalar_t>
struct StripView {
  SoftmaxBlockList blocks;
  int64_t block_offset[embedplug::infonce::kMaxSoftmaxBlocks];
  int64_t n;
  int64_t row_begin, rows;
  scalar_t* student;      // segments of the student similarities; logits / weights are written over them
  const scalar_t* guide;  // same layout: the student buffer when self-guided, nullptr when unguided
  bool guided;
  scalar_t scale;
  DeviceGuide<scalar_t> guide_state;
};

template <typename scalar_t>
StripView<scalar_t> make_strip_view(const StripLayout& layout, const InfoNCEInputs& inputs,
                                    const DeviceGuide<scalar_t>& guide, const at::Tensor& student_buffer,
                                    const at::Tensor& guide_buffer, double scale, int64_t row_begin, int64_t rows) {
  StripView<scalar_t> view{};
  view.blocks = layout.blocks;
  for (int b = 0; b < layout.blocks.count; ++b) view.block_offset[b] = layout.block_offset[b];
  view.n = inputs.n;
  view.row_begin = row_begin;
  view.rows = rows;
  view.student = student_buffer.data_ptr<scalar_t>();
  view.guided = inputs.guided;
  view.guide = !inputs.guided ? nullptr
               : inputs.self_guided ? view.student
                                    : guide_buffer.data_ptr<scalar_t>();
  view.scale = static_cast<scalar_t>(scale);
  view.guide_state = guide;
  return view;
}

// Block b's [rows, num_columns] segment of a strip buffer.
inline at::Tensor strip_segment(const at::Tensor& buffer, const StripLayout& layout, int b, int64_t rows) {
  const int64_t cols = layout.blocks.blocks[b].num_columns;
  return buffer.narrow(0, rows * layout.block_offset[b], rows * cols).view({rows, cols});
}

inline const at::Tensor& row_source(const SoftmaxBlock& block, const at::Tensor& anchors, const at::Tensor& candidates) {
  return block.rows_are_positives ? candidates : anchors;
}

inline const at::Tensor& column_source(const SoftmaxBlock& block, const at::Tensor& anchors,
                                       const at::Tensor& candidates) {
  return block.columns_are_anchors ? anchors : candidates;
}

// The strip's student similarities (and the separate guide's) for every group: one GEMM each.
inline void compute_strip_similarities(const StripLayout& layout, const InfoNCEInputs& inputs, int64_t row_begin,
                                       int64_t rows, const at::Tensor& student_buffer, const at::Tensor& guide_buffer) {
  const bool separate_guide = inputs.guided && !inputs.self_guided;
  for (int b = 0; b < layout.blocks.count; ++b) {
    const SoftmaxBlock& block = layout.blocks.blocks[b];
    auto student = strip_segment(student_buffer, layout, b, rows);
    at::mm_out(student, row_source(block, inputs.anchors, inputs.candidates).narrow(0, row_begin, rows),
               column_source(block, inputs.anchors, inputs.candidates).narrow(0, 0, block.num_columns).t());
    if (separate_guide) {
      auto guide = strip_segment(guide_buffer, layout, b, rows);
      at::mm_out(guide, row_source(block, inputs.guide_anchors, inputs.guide_candidates).narrow(0, row_begin, rows),
                 column_source(block, inputs.guide_anchors, inputs.guide_candidates)
                     .narrow(0, 0, block.num_columns)
                     .t());
    }
  }
}

// Runs fn(row_begin, rows, student_buffer, guide_buffer) for every strip after computing its
// similarities; the buffers are reused from strip to strip (stream order keeps them apart).
template <typename Fn>
void for_each_strip(const StripLayout& layout, const InfoNCEInputs& inputs, Fn&& fn) {
  const bool separate_guide = inputs.guided && !inputs.self_guided;
  const int64_t buffer_scalars = layout.rows_per_strip * layout.total_columns;
  const auto student_buffer = at::empty({buffer_scalars}, inputs.anchors.options());
  const auto guide_buffer = separate_guide ? at::empty({buffer_scalars}, inputs.anchors.options()) : at::Tensor();
  for (int64_t row_begin = 0; row_begin < inputs.n; row_begin += layout.rows_per_strip) {
    const int64_t rows = std::min(layout.rows_per_strip, inputs.n - row_begin);
    compute_strip_similarities(layout, inputs, row_begin, rows, student_buffer, guide_buffer);
    fn(row_begin, rows, student_buffer, guide_buffer);
  }
}

// With the strip buffer holding d loss / d sim (the softmax weights), the strip's gradient terms:
// row side grad[rows] += W C_b, column side grad[columns of b] += W^T R. Each is a GEMM on the
// current stream, strip after strip: the accumulation order is fixed, with no atomics.
inline void accumulate_strip_gradient(const StripLayout& layout, const InfoNCEInputs& inputs, int64_t row_begin,
                                      int64_t rows, const at::Tensor& weight_buffer, at::Tensor& grad_anchors,
                                      at::Tensor& grad_candidates) {
  for (int b = 0; b < layout.blocks.count; ++b) {
    const SoftmaxBlock& block = layout.blocks.blocks[b];
    const auto weights = strip_segment(weight_buffer, layout, b, rows);
    at::Tensor& row_gradient = block.rows_are_positives ? grad_candidates : grad_anchors;
    at::Tensor& column_gradient = block.columns_are_anchors ? grad_anchors : grad_candidates;
    row_gradient.narrow(0, row_begin, rows)
        .addmm_(weights, column_source(block, inputs.anchors, inputs.candidates).narrow(0, 0, block.num_columns));
    column_gradient.narrow(0, 0, block.num_columns)
        .addmm_(weights.t(), row_source(block, inputs.anchors, inputs.candidates).narrow(0, row_begin, rows));
  }
}

// ---------------------------------------------------------------------------------------------
// Device side of the epilogue.

// Calls visit(b, j, index, similarity, logit) for every entry (group b, column j) of strip row r
// this thread owns (columns threadIdx.x, threadIdx.x + blockDim.x, ... of every group), index being
// the entry's position in the strip buffer; the logit follows infonce::masked_logit (exclude_self, the guide's
// verdict with its exact tie fix-up, the protected pair).
template <typename scalar_t, typename Visit>
__device__ inline void for_each_row_logit(const StripView<scalar_t>& view, int64_t r, const Visit& visit) {
  const int64_t i = view.row_begin + r;
  const DeviceGuide<scalar_t>& guide = view.guide_state;
  for (int b = 0; b < view.blocks.count; ++b) {
    const SoftmaxBlock& block = view.blocks.blocks[b];
    const int64_t cols = block.num_columns;
    const int64_t row_offset = view.rows * view.block_offset[b] + r * cols;
    scalar_t threshold = 0, lower = 0, upper = 0;
    const scalar_t* guide_row = nullptr;
    const scalar_t* guide_columns = nullptr;
    if (view.guided) {
      threshold = guide.threshold[i];
      const scalar_t row_norm = block.rows_are_positives ? guide.candidate_norm[i] : guide.anchor_norm[i];
      const scalar_t max_column_norm = guide.max_norms[block.columns_are_anchors ? 0 : 1];
      const scalar_t band = embedplug::infonce::threshold_band(guide.relative_tolerance, row_norm, max_column_norm);
      upper = threshold + band;
      lower = threshold - band;
      guide_row = (block.rows_are_positives ? guide.candidates : guide.anchors) + i * guide.dim;
      guide_columns = block.columns_are_anchors ? guide.anchors : guide.candidates;
    }
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const int64_t index = row_offset + j;
      const scalar_t similarity = view.student[index];
      const scalar_t guide_value = view.guided ? view.guide[index] : scalar_t(0);
      const auto exact_keeps = [&]() {
        return embedplug::infonce::guide_keeps_exact(
            embedplug::infonce::exact_dot(guide_row, guide_columns + j * guide.dim, guide.dim), threshold);
      };
      const scalar_t logit = embedplug::infonce::masked_logit(block, i, j, view.n, view.scale, similarity, view.guided,
                                                              guide_value, lower, upper, exact_keeps);
      visit(b, j, index, similarity, logit);
    }
  }
}

}  // namespace infonce_strips
}  // namespace cuda
}  // namespace embedplug
