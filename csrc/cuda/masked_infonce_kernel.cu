// CUDA kernels of masked_infonce and _masked_infonce_backward (the semantics are the CPU kernel's,
// csrc/cpu/masked_infonce_kernel.cpp; the rules are infonce_rules.h, shared with it).
//
// Forward: per strip of anchor rows, one GEMM per column group into the bounded strip buffer, then
// one thread block per row folds its masked logits into per-thread online log-sum-exp states and
// merges them with a CUB block reduction: only the per-row loss and log-normaliser survive.
// Backward: recomputes each strip, turns it in place into d loss_i / d sim_ij = grad_i * scale *
// exp(logit_ij - lse_i) with the saved log-normaliser, and adds the row side (W C) and the column
// side (W^T R) as GEMMs, strip after strip: deterministic, no atomics.
#include <torch/library.h>

#include <optional>

#include "cuda/masked_infonce_common.cuh"

namespace embedplug {
namespace cuda {
namespace {

using namespace infonce_strips;

// One thread block per strip row: loss_i = lse_i - target logit, the target being the logit of
// (a_i, p_i) exactly as it entered the softmax.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    forward_rows_kernel(StripView<scalar_t> view, scalar_t* __restrict__ loss, scalar_t* __restrict__ log_normalizer) {
  const int64_t r = blockIdx.x;
  const int64_t i = view.row_begin + r;
  __shared__ scalar_t target_logit;
  RunningLogSumExp<scalar_t> partial = RunningLogSumExp<scalar_t>::empty();
  for_each_row_logit(view, r, [&](int b, int64_t j, int64_t, scalar_t, scalar_t logit) {
    if (b == 0 && j == i) target_logit = logit;
    partial.add_logit(logit);
  });
  __syncthreads();  // target_logit
  const RunningLogSumExp<scalar_t> row = reduce_row_state(partial);
  if (threadIdx.x == 0) {
    const scalar_t lse = row.value();
    log_normalizer[i] = lse;
    loss[i] = lse - target_logit;
  }
}

// One thread block per strip row: the strip's similarities become the softmax weights
// row_weight_i * exp(logit - lse_i) (row_weight_i = grad_loss_i * scale), written over them.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    backward_weights_kernel(StripView<scalar_t> view, const scalar_t* __restrict__ row_weight,
                            const scalar_t* __restrict__ log_normalizer) {
  const int64_t r = blockIdx.x;
  const int64_t i = view.row_begin + r;
  const scalar_t weight = row_weight[i];
  const scalar_t lse = log_normalizer[i];
  scalar_t* weights = view.student;
  for_each_row_logit(view, r, [&](int, int64_t, int64_t index, scalar_t, scalar_t logit) {
    weights[index] = embedplug::infonce::exp_or_zero(logit - lse) * weight;
  });
}

std::tuple<at::Tensor, at::Tensor> masked_infonce_cuda(
    const at::Tensor& anchors, const at::Tensor& candidates, const std::optional<at::Tensor>& guide_anchors,
    const std::optional<at::Tensor>& guide_candidates, double scale, c10::string_view margin_strategy,
    double margin, bool anchor_anchor, bool positive_anchor, int64_t positive_candidate_columns,
    bool exclude_self) {
  const auto [options, inputs, blocks] =
      make_cuda_problem("masked_infonce", anchors, candidates, guide_anchors, guide_candidates, scale,
                        margin_strategy, margin, anchor_anchor, positive_anchor, positive_candidate_columns,
                        exclude_self);
  // After every check (devices included): a guard on a bad input's device would act before the error.
  const at::cuda::CUDAGuard guard(inputs.anchors.device());
  const bool separate_guide = inputs.guided && !inputs.self_guided;
  const StripLayout layout = make_strip_layout(blocks, inputs.n, separate_guide);
  auto loss = at::empty({inputs.n}, inputs.anchors.options());
  auto log_normalizer = at::empty({inputs.n}, inputs.anchors.options());
  AT_DISPATCH_FLOATING_TYPES(inputs.anchors.scalar_type(), "masked_infonce_cuda", [&] {
    const GuideTensors<scalar_t> guide = make_device_guide<scalar_t>(inputs, options);
    for_each_strip(layout, inputs, [&](int64_t row_begin, int64_t rows, const at::Tensor& student_buffer,
                                       const at::Tensor& guide_buffer) {
      const auto view = make_strip_view<scalar_t>(layout, inputs, guide.view, student_buffer, guide_buffer, scale,
                                                  row_begin, rows);
      forward_rows_kernel<scalar_t><<<static_cast<unsigned int>(rows), kThreadsPerBlock, 0,
                                      at::cuda::getCurrentCUDAStream()>>>(
          view, loss.data_ptr<scalar_t>(), log_normalizer.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {loss, log_normalizer};
}

std::tuple<at::Tensor, at::Tensor> masked_infonce_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& anchors, const at::Tensor& candidates,
    const std::optional<at::Tensor>& guide_anchors, const std::optional<at::Tensor>& guide_candidates,
    const at::Tensor& log_normalizer, double scale, c10::string_view margin_strategy, double margin,
    bool anchor_anchor, bool positive_anchor, int64_t positive_candidate_columns, bool exclude_self) {
  check_same_cuda_device("_masked_infonce_backward",
                         {{"anchors", &anchors}, {"grad_loss", &grad_loss}, {"log_normalizer", &log_normalizer}});
  // The dtype checks the CPU backward makes: grad_loss and log_normalizer share the anchors' dtype.
  check_floating_inputs("_masked_infonce_backward",
                        {{"anchors", &anchors}, {"grad_loss", &grad_loss}, {"log_normalizer", &log_normalizer}});
  const auto [options, inputs, blocks] =
      make_cuda_problem("_masked_infonce_backward", anchors, candidates, guide_anchors, guide_candidates, scale,
                        margin_strategy, margin, anchor_anchor, positive_anchor, positive_candidate_columns,
                        exclude_self);
  // After every check (devices included): a guard on a bad input's device would act before the error.
  const at::cuda::CUDAGuard guard(inputs.anchors.device());
  const int64_t n = inputs.n;
  TORCH_CHECK(grad_loss.dim() == 1 && grad_loss.size(0) == n && log_normalizer.dim() == 1 &&
                  log_normalizer.size(0) == n,
              "embedplug: grad_loss and log_normalizer must be [N]");
  const bool separate_guide = inputs.guided && !inputs.self_guided;
  const StripLayout layout = make_strip_layout(blocks, n, separate_guide);
  auto grad_anchors = at::zeros_like(inputs.anchors);
  auto grad_candidates = at::zeros_like(inputs.candidates);
  AT_DISPATCH_FLOATING_TYPES(inputs.anchors.scalar_type(), "masked_infonce_backward_cuda", [&] {
    const GuideTensors<scalar_t> guide = make_device_guide<scalar_t>(inputs, options);
    const scalar_t tile_scale = static_cast<scalar_t>(scale);
    const auto weights_tensor = grad_loss.to(inputs.anchors.scalar_type()).contiguous();
    const auto lse_tensor = log_normalizer.to(inputs.anchors.scalar_type()).contiguous();
    const auto row_weights = (weights_tensor * tile_scale).contiguous();
    for_each_strip(layout, inputs, [&](int64_t row_begin, int64_t rows, const at::Tensor& student_buffer,
                                       const at::Tensor& guide_buffer) {
      const auto view = make_strip_view<scalar_t>(layout, inputs, guide.view, student_buffer, guide_buffer, scale,
                                                  row_begin, rows);
      backward_weights_kernel<scalar_t><<<static_cast<unsigned int>(rows), kThreadsPerBlock, 0,
                                          at::cuda::getCurrentCUDAStream()>>>(
          view, row_weights.data_ptr<scalar_t>(), lse_tensor.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      accumulate_strip_gradient(layout, inputs, row_begin, rows, student_buffer, grad_anchors, grad_candidates);
    });
    // The target term -scale * <a_i, p_i> of the loss.
    const auto target_weight = (weights_tensor * -tile_scale).unsqueeze(1);
    grad_anchors.add_(inputs.candidates.narrow(0, 0, n) * target_weight);
    grad_candidates.narrow(0, 0, n).add_(inputs.anchors * target_weight);
  });
  return {grad_anchors, grad_candidates};
}

}  // namespace

TORCH_LIBRARY_IMPL(embedplug, CUDA, m) {
  m.impl("masked_infonce", &masked_infonce_cuda);
  m.impl("_masked_infonce_backward", &masked_infonce_backward_cuda);
}

}  // namespace cuda
}  // namespace embedplug
