// CUDA kernel of masked_infonce_mean: the mean masked InfoNCE loss with its gradient in the same
// pass (the semantics are the CPU kernel's, csrc/cpu/masked_infonce_mean_kernel.cpp; the rules are
// infonce_rules.h, shared with it).
//
// Per strip of anchor rows: one GEMM per column group into the bounded strip buffer (and one per
// group for a separate guide); then one thread block per row writes the masked logits over the
// similarities while folding them into per-thread online log-sum-exp states, merges those with a
// CUB block reduction, and (with compute_grad) turns the row in place into
// d mean loss / d sim_ij = (scale / N) * exp(logit_ij - max_i) / sum_i; then the row side (W C) and
// column side (W^T R) gradient GEMMs of every group, strip after strip: no recomputation, no atomics.
//
// Per-direction softmax partitions (one log-sum-exp per column group, averaged) and an additive
// detached hardness term on the query-to-doc logits fit this kernel as follows: mean_rows_kernel's
// visit adds the hardness term to the block-0 logit (it receives the raw similarity for that), keeps
// one RunningLogSumExp per group instead of one per row (reduce_row_state once per group), writes
// the row loss from the groups' values, and its weight pass uses the entry's group's shift and
// coefficient (row_weight / (groups * group sum)).
#include <torch/library.h>

#include <optional>

#include "cuda/masked_infonce_common.cuh"

namespace embedplug {
namespace cuda {
namespace {

using namespace infonce_strips;

// One thread block per strip row. row_loss_i = lse_i - target logit (the logit of (a_i, p_i) as it
// entered the softmax). With compute_grad the row's logits become the gradient weights
// exp(logit + shift_i) * row_weight / sum_i, shift_i = -max_i (NaN for a row with a NaN logit, as
// the CPU kernel's amax gives it, so the whole row's gradient is NaN there too).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    mean_rows_kernel(StripView<scalar_t> view, scalar_t row_weight, bool compute_grad,
                     scalar_t* __restrict__ row_loss) {
  const int64_t r = blockIdx.x;
  const int64_t i = view.row_begin + r;
  __shared__ scalar_t target_logit, shift, coefficient;
  scalar_t* logits = view.student;
  RunningLogSumExp<scalar_t> partial = RunningLogSumExp<scalar_t>::empty();
  for_each_row_logit(view, r, [&](int b, int64_t j, int64_t index, scalar_t, scalar_t logit) {
    if (b == 0 && j == i) target_logit = logit;
    if (compute_grad) logits[index] = logit;
    partial.add_logit(logit);
  });
  __syncthreads();  // target_logit
  const RunningLogSumExp<scalar_t> row = reduce_row_state(partial);
  if (threadIdx.x == 0) {
    row_loss[i] = row.value() - target_logit;
    shift = embedplug::infonce::softmax_shift(row.nan_propagating_maximum());
    coefficient = row_weight / row.sum;
  }
  if (!compute_grad) return;
  __syncthreads();  // shift, coefficient; every logit of the row written
  const scalar_t row_shift = shift, row_coefficient = coefficient;
  for (int b = 0; b < view.blocks.count; ++b) {
    const int64_t cols = view.blocks.blocks[b].num_columns;
    scalar_t* row_logits = logits + view.rows * view.block_offset[b] + r * cols;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      row_logits[j] = embedplug::infonce::exp_or_zero(row_logits[j] + row_shift) * row_coefficient;
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_infonce_mean_cuda(
    const at::Tensor& anchors, const at::Tensor& candidates, const std::optional<at::Tensor>& guide_anchors,
    const std::optional<at::Tensor>& guide_candidates, double scale, c10::string_view margin_strategy,
    double margin, bool anchor_anchor, bool positive_anchor, int64_t positive_candidate_columns, bool exclude_self,
    bool compute_grad) {
  const at::cuda::CUDAGuard guard(anchors.device());
  const auto [options, inputs, blocks] =
      make_cuda_problem("masked_infonce_mean", anchors, candidates, guide_anchors, guide_candidates, scale,
                        margin_strategy, margin, anchor_anchor, positive_anchor, positive_candidate_columns,
                        exclude_self);
  const int64_t n = inputs.n;
  const bool separate_guide = inputs.guided && !inputs.self_guided;
  const StripLayout layout = make_strip_layout(blocks, n, separate_guide);
  const auto tensor_options = inputs.anchors.options();
  auto row_loss = at::empty({n}, tensor_options);
  at::Tensor grad_anchors, grad_candidates;
  if (compute_grad) {
    grad_anchors = at::zeros_like(inputs.anchors);
    grad_candidates = at::zeros_like(inputs.candidates);
  } else {
    grad_anchors = at::empty({0, anchors.size(1)}, anchors.options());
    grad_candidates = at::empty({0, candidates.size(1)}, candidates.options());
  }
  AT_DISPATCH_FLOATING_TYPES(inputs.anchors.scalar_type(), "masked_infonce_mean_cuda", [&] {
    const GuideTensors<scalar_t> guide = make_device_guide<scalar_t>(inputs, options);
    // d mean_i(loss_i) / d sim_ij = scale * softmax_ij / N.
    const scalar_t row_weight = static_cast<scalar_t>(scale) / static_cast<scalar_t>(n);
    for_each_strip(layout, inputs, [&](int64_t row_begin, int64_t rows, const at::Tensor& student_buffer,
                                       const at::Tensor& guide_buffer) {
      const auto view = make_strip_view<scalar_t>(layout, inputs, guide.view, student_buffer, guide_buffer, scale,
                                                  row_begin, rows);
      mean_rows_kernel<scalar_t><<<static_cast<unsigned int>(rows), kThreadsPerBlock, 0,
                                   at::cuda::getCurrentCUDAStream()>>>(view, row_weight, compute_grad,
                                                                       row_loss.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (compute_grad) {
        accumulate_strip_gradient(layout, inputs, row_begin, rows, student_buffer, grad_anchors, grad_candidates);
      }
    });
    if (compute_grad) {
      // The target term -scale * <a_i, p_i> of each row's loss.
      grad_anchors.add_(inputs.candidates.narrow(0, 0, n), -row_weight);
      grad_candidates.narrow(0, 0, n).add_(inputs.anchors, -row_weight);
    }
  });
  // The same reduction as loss.mean() on masked_infonce's per-row losses.
  return {row_loss.mean(), grad_anchors, grad_candidates};
}

}  // namespace

TORCH_LIBRARY_IMPL(embedplug, CUDA, m) {
  m.impl("masked_infonce_mean", &masked_infonce_mean_cuda);
}

}  // namespace cuda
}  // namespace embedplug
