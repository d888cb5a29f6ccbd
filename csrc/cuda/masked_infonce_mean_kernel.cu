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
// MultipleNegativesRankingLoss's options (masked_infonce_mnrl_rules.h, the CPU kernel's rules): the
// epilogue adds the detached hardness term to the selected query-to-doc logits (from the raw GEMM
// similarity), keeps one online log-sum-exp per softmax group (one per row joint, one per block
// per direction), reduces each group separately, and weights an entry with its group's shift and
// coefficient. The gradient GEMMs are unchanged: the weights carry everything.
#include <torch/library.h>

#include <optional>

#include "cuda/masked_infonce_common.cuh"
#include "masked_infonce_mnrl_rules.h"

namespace embedplug {
namespace cuda {
namespace {

using namespace infonce_strips;

// The MNRL options as the epilogue reads them (plain values: MnrlOptions' members are host-only).
template <typename scalar_t>
struct DeviceMnrlOptions {
  infonce_mnrl::PartitionMode partition;
  infonce_mnrl::HardnessMode hardness;
  bool hardened;  // MnrlOptions::hardened(): a mode other than "none" and a positive strength
  scalar_t strength;
  int groups;     // partition_group_count(partition, number of blocks) <= kMaxGroups
};

// One thread block per strip row. row_loss_i = averaged_log_normalizer over the row's groups -
// target logit (the logit of (a_i, p_i) as it entered the softmax; hardness never touches it). With
// compute_grad the row's logits become the gradient weights
// exp(logit + shift_g) * group_gradient_coefficient(row_weight, sum_g, groups) of their group g,
// shift_g = group_shift(max_g) (NaN for a group with a NaN logit, as the CPU kernel's amax gives it,
// so that group's gradient is NaN there too).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    mean_rows_kernel(StripView<scalar_t> view, DeviceMnrlOptions<scalar_t> mnrl, scalar_t row_weight,
                     bool compute_grad, scalar_t* __restrict__ row_loss) {
  constexpr int kMaxGroups = infonce_mnrl::kMaxGroups;
  const int64_t r = blockIdx.x;
  const int64_t i = view.row_begin + r;
  __shared__ scalar_t target_logit;
  __shared__ scalar_t shifts[kMaxGroups], coefficients[kMaxGroups];
  __shared__ scalar_t maxima[kMaxGroups], sums[kMaxGroups];
  scalar_t* logits = view.student;
  RunningLogSumExp<scalar_t> partial[kMaxGroups];
  for (int g = 0; g < kMaxGroups; ++g) partial[g] = RunningLogSumExp<scalar_t>::empty();
  for_each_row_logit(view, r, [&](int b, int64_t j, int64_t index, scalar_t similarity, scalar_t logit) {
    // Block 0 is query-to-doc, the only block hardness weighting touches; similarity is the raw
    // GEMM value (before scaling), the term is detached (the gradient weights stay the softmax's).
    if (b == 0 && mnrl.hardened && infonce_mnrl::hardness_applies(mnrl.hardness, j % view.n == i, j < view.n)) {
      logit = infonce_mnrl::hardened_logit(logit, similarity, mnrl.strength);
    }
    if (b == 0 && j == i) target_logit = logit;
    if (compute_grad) logits[index] = logit;
    partial[infonce_mnrl::partition_group(mnrl.partition, b)].add_logit(logit);
  });
  for (int g = 0; g < mnrl.groups; ++g) {
    __syncthreads();  // target_logit; reduce_row_state's temporary storage is reused group after group
    const RunningLogSumExp<scalar_t> group = reduce_row_state(partial[g]);
    if (threadIdx.x == 0) {
      maxima[g] = group.nan_propagating_maximum();
      sums[g] = group.saw_nan ? std::numeric_limits<scalar_t>::quiet_NaN() : group.sum;
    }
  }
  if (threadIdx.x == 0) {
    row_loss[i] = infonce_mnrl::averaged_log_normalizer(maxima, sums, mnrl.groups) - target_logit;
    for (int g = 0; g < mnrl.groups; ++g) {
      shifts[g] = infonce_mnrl::group_shift(maxima[g]);
      coefficients[g] = infonce_mnrl::group_gradient_coefficient(row_weight, sums[g], mnrl.groups);
    }
  }
  if (!compute_grad) return;
  __syncthreads();  // group shifts, coefficients; every logit of the row written
  for (int b = 0; b < view.blocks.count; ++b) {
    const int g = infonce_mnrl::partition_group(mnrl.partition, b);
    const scalar_t shift = shifts[g], coefficient = coefficients[g];
    const int64_t cols = view.blocks.blocks[b].num_columns;
    scalar_t* row_logits = logits + view.rows * view.block_offset[b] + r * cols;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      row_logits[j] = embedplug::infonce::exp_or_zero(row_logits[j] + shift) * coefficient;
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_infonce_mean_cuda(
    const at::Tensor& anchors, const at::Tensor& candidates, const std::optional<at::Tensor>& guide_anchors,
    const std::optional<at::Tensor>& guide_candidates, double scale, c10::string_view margin_strategy,
    double margin, bool anchor_anchor, bool positive_anchor, int64_t positive_candidate_columns, bool exclude_self,
    bool compute_grad, c10::string_view partition_mode, c10::string_view hardness_mode, double hardness_strength) {
  const infonce_mnrl::MnrlOptions mnrl =
      infonce_mnrl::make_mnrl_options(partition_mode, hardness_mode, hardness_strength);
  const auto [options, inputs, blocks] =
      make_cuda_problem("masked_infonce_mean", anchors, candidates, guide_anchors, guide_candidates, scale,
                        margin_strategy, margin, anchor_anchor, positive_anchor, positive_candidate_columns,
                        exclude_self);
  // After every check (devices included): a guard on a bad input's device would act before the error.
  const at::cuda::CUDAGuard guard(inputs.anchors.device());
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
    const DeviceMnrlOptions<scalar_t> device_mnrl{mnrl.partition, mnrl.hardness, mnrl.hardened(),
                                                  static_cast<scalar_t>(mnrl.hardness_strength),
                                                  infonce_mnrl::partition_group_count(mnrl.partition, blocks.count)};
    TORCH_INTERNAL_ASSERT(device_mnrl.groups <= infonce_mnrl::kMaxGroups);
    for_each_strip(layout, inputs, [&](int64_t row_begin, int64_t rows, const at::Tensor& student_buffer,
                                       const at::Tensor& guide_buffer) {
      const auto view = make_strip_view<scalar_t>(layout, inputs, guide.view, student_buffer, guide_buffer, scale,
                                                  row_begin, rows);
      mean_rows_kernel<scalar_t><<<static_cast<unsigned int>(rows), kThreadsPerBlock, 0,
                                   at::cuda::getCurrentCUDAStream()>>>(view, device_mnrl, row_weight, compute_grad,
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
