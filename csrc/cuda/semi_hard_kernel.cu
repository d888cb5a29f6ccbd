// Semi-hard triplet loss (sentence-transformers' BatchSemiHardTripletLoss) on CUDA, mirroring
// csrc/cpu/semi_hard_kernel.cpp: per block of anchors one cuBLAS GEMM into a bounded [rows x N]
// buffer, then one thread block per anchor row: the row minimum and the masked maximum (block
// arg-extreme reductions), then per positive one block arg-min over the semi-hard candidates
// (pairwise_rules.h: is_semi_hard_candidate, semi_hard_fallback, hinge and its slope). The
// positives' terms are added by one thread in the CPU kernel's order, so a row's sum and weights
// repeat the CPU kernel's arithmetic exactly given the same distances. Gradient: each positive
// pair's two weights applied by pair_weight_gradient (two GEMMs per block, no atomics).
#include <torch/library.h>

#include <type_traits>

#include "cuda/pairwise_blocks.cuh"

namespace embedplug {
namespace cuda {
namespace {

// One thread block per anchor row. grads == nullptr means g_a = 1 (the forward's unit gradient);
// weights == nullptr means no gradient; sums may be null (backward).
template <typename scalar_t>
__global__ void semi_hard_rows_kernel(const scalar_t* __restrict__ distances, const int64_t* __restrict__ labels,
                                      ClassView classes, const scalar_t* __restrict__ grads, scalar_t margin,
                                      int64_t row_begin, int64_t n, scalar_t* __restrict__ sums,
                                      scalar_t* __restrict__ weights) {
  using ArgReduce = cub::BlockReduce<ArgExtreme<scalar_t>, kThreadsPerBlock>;
  __shared__ typename ArgReduce::TempStorage storage;
  __shared__ ArgExtreme<scalar_t> shared_min;

  const int64_t a = row_begin + blockIdx.x;
  const scalar_t* row = distances + static_cast<int64_t>(blockIdx.x) * n;
  scalar_t* weight_row = weights ? weights + static_cast<int64_t>(blockIdx.x) * n : nullptr;
  const scalar_t grad = grads ? grads[a] : scalar_t(1);

  // A zero incoming gradient (backward) needs no weights, as on CPU.
  if (grads != nullptr && grad == scalar_t(0)) {
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) weight_row[j] = scalar_t(0);
    return;
  }
  // ST multiplies its whole loss matrix by a mask, so any non-finite distance, even in a row
  // without positives, makes the loss NaN.
  bool non_finite = false;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) non_finite |= is_non_finite(row[j]);
  const bool poisoned = __syncthreads_or(non_finite);
  const int64_t num_positives = classes.num_positives(a);
  if (weight_row) {
    const scalar_t fill = poisoned ? std::numeric_limits<scalar_t>::quiet_NaN() : scalar_t(0);
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) weight_row[j] = fill;
  }
  if (poisoned || num_positives == 0) {
    if (threadIdx.x == 0 && sums) sums[a] = poisoned ? std::numeric_limits<scalar_t>::quiet_NaN() : scalar_t(0);
    return;
  }

  ArgExtreme<scalar_t> row_min = empty_argmin<scalar_t>();
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) keep_min(row_min, row[j], j);
  row_min = ArgReduce(storage).Reduce(row_min, MergeMin());
  if (threadIdx.x == 0) shared_min = row_min;
  __syncthreads();
  row_min = shared_min;

  // Masked maximum over the negatives of (d - row_min), first index on ties.
  const int64_t label = labels[a];
  ArgExtreme<scalar_t> negative_max = empty_argmax<scalar_t>();
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    if (is_negative_pair(label, labels[j])) keep_max(negative_max, row[j] - row_min.value, j);
  }
  negative_max = ArgReduce(storage).Reduce(negative_max, MergeMax());
  // Only thread 0 holds the reduced values from here on, and only it uses them.
  const SemiHardFallback<scalar_t> fallback = semi_hard_fallback(row_min, negative_max, classes.first_member(a));

  double sum = 0;
  for (int64_t k = 0; k < num_positives; ++k) {
    const int64_t p = classes.positive(a, k);
    const scalar_t positive = row[p];
    ArgExtreme<scalar_t> chosen = empty_argmin<scalar_t>();
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      if (is_negative_pair(label, labels[j]) && is_semi_hard_candidate(row[j], positive)) keep_min(chosen, row[j], j);
    }
    __syncthreads();  // storage reuse; and the weights of earlier positives are written by thread 0
    chosen = ArgReduce(storage).Reduce(chosen, MergeMin());
    if (threadIdx.x == 0) {
      const bool found = is_set(chosen);
      const scalar_t t = triplet_value(positive, found ? chosen.value : fallback.distance, margin);
      sum += triplet_hinge(t);
      if (weight_row) {
        const scalar_t weight = grad * hinge_slope(t);
        weight_row[p] += weight;
        weight_row[found ? chosen.index : fallback.column] -= weight;
      }
    }
  }
  if (threadIdx.x == 0 && sums) sums[a] = static_cast<scalar_t>(sum);
}

template <typename scalar_t>
void launch_rows(const at::Tensor& distances, const at::Tensor& labels, const DeviceClasses& classes,
                 const scalar_t* grads, double margin, int64_t row_begin, scalar_t* sums, scalar_t* weights) {
  const int64_t rows = distances.size(0);
  semi_hard_rows_kernel<scalar_t><<<static_cast<unsigned>(rows), kThreadsPerBlock, 0,
                                    at::cuda::getCurrentCUDAStream()>>>(
      distances.data_ptr<scalar_t>(), labels.data_ptr<int64_t>(), class_view(classes), grads,
      static_cast<scalar_t>(margin), row_begin, distances.size(1), sums, weights);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> semi_hard_triplet_loss_forward_cuda(const at::Tensor& embeddings,
                                                                       const at::Tensor& labels,
                                                                       c10::string_view distance, double margin,
                                                                       bool compute_grad) {
  check_finite_option("semi_hard_triplet_loss_forward", "margin", margin);
  check_cuda_embeddings_and_labels("semi_hard_triplet_loss_forward", embeddings, labels);
  const at::cuda::CUDAGuard guard(embeddings.device());
  const DistanceKind kind = parse_distance(std::string_view(distance.data(), distance.size()));
  const int64_t n = embeddings.size(0);
  auto loss_sums = at::empty({n}, embeddings.options());
  at::Tensor unit_grad = at::empty({0}, embeddings.options());
  const auto labels_contiguous = labels.contiguous();
  const DeviceClasses classes = device_classes(labels_contiguous);
  AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "semi_hard_triplet_loss_forward_cuda", [&] {
    const auto x = embeddings.detach().contiguous();
    const GemmOperand operand = prepare_row_block_operand(x, kind, kNormBlockRows);
    scalar_t* sum_ptr = loss_sums.data_ptr<scalar_t>();
    if (compute_grad) {
      unit_grad = pair_weight_gradient<scalar_t>(
          x, operand, kind, [&](int64_t row_begin, int64_t, const at::Tensor& block, at::Tensor& weights) {
            launch_rows<scalar_t>(block, labels_contiguous, classes, nullptr, margin, row_begin, sum_ptr,
                                  weights.data_ptr<scalar_t>());
          });
      return;
    }
    for_each_distance_row_block<scalar_t>(operand, kind, [&](int64_t row_begin, int64_t, const at::Tensor& block) {
      launch_rows<scalar_t>(block, labels_contiguous, classes, nullptr, margin, row_begin, sum_ptr, nullptr);
    });
  });
  return {loss_sums, unit_grad};
}

at::Tensor semi_hard_triplet_loss_backward_cuda(const at::Tensor& grad_sums, const at::Tensor& embeddings,
                                                const at::Tensor& labels, const at::Tensor& unit_grad,
                                                c10::string_view distance, double margin) {
  check_finite_option("_semi_hard_triplet_loss_backward", "margin", margin);
  return per_anchor_loss_backward(
      "_semi_hard_triplet_loss_backward", grad_sums, embeddings, labels, unit_grad, distance,
      [margin](const at::Tensor& block, const at::Tensor& labels_contiguous, const DeviceClasses& classes,
               const auto* grads, int64_t row_begin, auto* weights) {
        using scalar_t = std::remove_pointer_t<decltype(weights)>;
        launch_rows<scalar_t>(block, labels_contiguous, classes, grads, margin, row_begin, nullptr, weights);
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(embedplug, CUDA, m) {
  m.impl("semi_hard_triplet_loss_forward", &semi_hard_triplet_loss_forward_cuda);
  m.impl("_semi_hard_triplet_loss_backward", &semi_hard_triplet_loss_backward_cuda);
}

}  // namespace cuda
}  // namespace embedplug
