// Batch-all triplet loss (sentence-transformers' BatchAllTripletLoss) on CUDA, mirroring
// csrc/cpu/batch_all_kernel.cpp: per block of anchors one cuBLAS GEMM into a bounded [rows x N]
// buffer, then one thread block per anchor row compares every negative with every positive of the
// anchor (the rules of pairwise_rules.h: triplet value, kept, hinge, active, pair weights). The
// CPU kernel's sort-and-binary-search path for large classes computes the same counts; here every
// class size takes the direct O(|P| * N) path per row. Gradient: the pair weights
// W[a, p] = g_a * #{n kept}, W[a, n] = -g_a * #{p kept} applied by pair_weight_gradient (two GEMMs
// per block, no atomics).
#include <torch/library.h>

#include <type_traits>

#include "cuda/pairwise_blocks.cuh"

namespace embedplug {
namespace cuda {
namespace {

// Positive distances of one anchor staged in shared memory; beyond this many they are read from
// the distance row itself (same values, slower).
constexpr int kStagedPositives = 1024;

// One thread block per anchor row. grads == nullptr means g_a = 1 for every anchor (the forward's
// unit gradient); weights == nullptr means no gradient. Writes sums[a], counts[a] when non-null.
template <typename scalar_t>
__global__ void batch_all_rows_kernel(const scalar_t* __restrict__ distances, const int64_t* __restrict__ labels,
                                      ClassView classes, const scalar_t* __restrict__ grads, scalar_t margin,
                                      int64_t row_begin, int64_t n, scalar_t* __restrict__ sums,
                                      int64_t* __restrict__ counts, scalar_t* __restrict__ weights) {
  using SumReduce = cub::BlockReduce<double, kThreadsPerBlock>;
  using CountReduce = cub::BlockReduce<int64_t, kThreadsPerBlock>;
  __shared__ typename SumReduce::TempStorage sum_storage;
  __shared__ typename CountReduce::TempStorage count_storage;
  __shared__ scalar_t staged[kStagedPositives];

  const int64_t a = row_begin + blockIdx.x;
  const scalar_t* row = distances + static_cast<int64_t>(blockIdx.x) * n;
  scalar_t* weight_row = weights ? weights + static_cast<int64_t>(blockIdx.x) * n : nullptr;
  const scalar_t grad = grads ? grads[a] : scalar_t(1);
  const int64_t num_positives = classes.num_positives(a);

  // ST only looks at anchors with a positive; a zero incoming gradient (backward) needs no
  // weights, NaN row or not, as on CPU.
  if (num_positives == 0 || (grads != nullptr && grad == scalar_t(0))) {
    if (weight_row) {
      for (int64_t j = threadIdx.x; j < n; j += blockDim.x) weight_row[j] = scalar_t(0);
    }
    if (threadIdx.x == 0 && sums) sums[a] = scalar_t(0);
    if (threadIdx.x == 0 && counts) counts[a] = 0;
    return;
  }
  // ST turns any non-finite distance in the row into a NaN loss (0 * inf, inf - inf).
  bool non_finite = false;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) non_finite |= is_non_finite(row[j]);
  if (__syncthreads_or(non_finite)) {
    if (weight_row) {
      for (int64_t j = threadIdx.x; j < n; j += blockDim.x) weight_row[j] = std::numeric_limits<scalar_t>::quiet_NaN();
    }
    if (threadIdx.x == 0 && sums) sums[a] = std::numeric_limits<scalar_t>::quiet_NaN();
    if (threadIdx.x == 0 && counts) counts[a] = 0;
    return;
  }

  const int64_t staged_count = num_positives < kStagedPositives ? num_positives : kStagedPositives;
  for (int64_t k = threadIdx.x; k < staged_count; k += blockDim.x) staged[k] = row[classes.positive(a, k)];
  __syncthreads();

  // Negative columns: every triplet (p, j) of the row, and W[a, j].
  const int64_t label = labels[a];
  double sum = 0;
  int64_t count = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    if (!is_negative_pair(label, labels[j])) {
      if (weight_row) weight_row[j] = scalar_t(0);  // positives are written below
      continue;
    }
    const scalar_t negative = row[j];
    int64_t kept_here = 0;
    for (int64_t k = 0; k < num_positives; ++k) {
      const scalar_t positive = k < staged_count ? staged[k] : row[classes.positive(a, k)];
      const scalar_t t = triplet_value(positive, negative, margin);
      sum += triplet_hinge(t);
      count += triplet_active(t);
      kept_here += triplet_kept(t);
    }
    if (weight_row) weight_row[j] = batch_all_negative_weight(grad, kept_here);
  }
  const double row_sum = SumReduce(sum_storage).Sum(sum);
  const int64_t row_count = CountReduce(count_storage).Sum(count);
  if (threadIdx.x == 0 && sums) sums[a] = static_cast<scalar_t>(row_sum);
  if (threadIdx.x == 0 && counts) counts[a] = row_count;
  if (!weight_row) return;
  __syncthreads();  // the same-label zeros above are written before the positives' weights

  // Positive columns: W[a, p] = g * #{negatives j: kept(p, j)}.
  for (int64_t k = threadIdx.x; k < num_positives; k += blockDim.x) {
    const scalar_t positive = k < staged_count ? staged[k] : row[classes.positive(a, k)];
    int64_t kept = 0;
    for (int64_t j = 0; j < n; ++j) {
      kept += is_negative_pair(label, labels[j]) && triplet_kept(triplet_value(positive, row[j], margin));
    }
    weight_row[classes.positive(a, k)] = batch_all_positive_weight(grad, kept);
  }
}

template <typename scalar_t>
void launch_rows(const at::Tensor& distances, const at::Tensor& labels, const DeviceClasses& classes,
                 const scalar_t* grads, double margin, int64_t row_begin, scalar_t* sums, int64_t* counts,
                 scalar_t* weights) {
  const int64_t rows = distances.size(0);
  batch_all_rows_kernel<scalar_t><<<static_cast<unsigned>(rows), kThreadsPerBlock, 0,
                                    at::cuda::getCurrentCUDAStream()>>>(
      distances.data_ptr<scalar_t>(), labels.data_ptr<int64_t>(), class_view(classes), grads,
      static_cast<scalar_t>(margin), row_begin, distances.size(1), sums, counts, weights);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_all_triplet_loss_forward_cuda(
    const at::Tensor& embeddings, const at::Tensor& labels, c10::string_view distance, double margin,
    bool compute_grad) {
  check_finite_option("batch_all_triplet_loss_forward", "margin", margin);
  check_cuda_embeddings_and_labels("batch_all_triplet_loss_forward", embeddings, labels);
  const at::cuda::CUDAGuard guard(embeddings.device());
  const DistanceKind kind = parse_distance(std::string_view(distance.data(), distance.size()));
  const int64_t n = embeddings.size(0);
  auto loss_sums = at::empty({n}, embeddings.options());
  auto counts = at::empty({n}, labels.options());
  at::Tensor unit_grad = at::empty({0}, embeddings.options());
  const auto labels_contiguous = labels.contiguous();
  const DeviceClasses classes = device_classes(labels_contiguous);
  AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "batch_all_triplet_loss_forward_cuda", [&] {
    const auto x = embeddings.detach().contiguous();
    const GemmOperand operand = prepare_row_block_operand(x, kind, kNormBlockRows);
    scalar_t* sum_ptr = loss_sums.data_ptr<scalar_t>();
    int64_t* count_ptr = counts.data_ptr<int64_t>();
    if (compute_grad) {
      unit_grad = pair_weight_gradient<scalar_t>(
          x, operand, kind, [&](int64_t row_begin, int64_t, const at::Tensor& block, at::Tensor& weights) {
            launch_rows<scalar_t>(block, labels_contiguous, classes, nullptr, margin, row_begin, sum_ptr, count_ptr,
                                  weights.data_ptr<scalar_t>());
          });
      return;
    }
    for_each_distance_row_block<scalar_t>(operand, kind, [&](int64_t row_begin, int64_t, const at::Tensor& block) {
      launch_rows<scalar_t>(block, labels_contiguous, classes, nullptr, margin, row_begin, sum_ptr, count_ptr, nullptr);
    });
  });
  return {loss_sums, counts, unit_grad};
}

at::Tensor batch_all_triplet_loss_backward_cuda(const at::Tensor& grad_sums, const at::Tensor& embeddings,
                                                const at::Tensor& labels, const at::Tensor& unit_grad,
                                                c10::string_view distance, double margin) {
  check_finite_option("_batch_all_triplet_loss_backward", "margin", margin);
  return per_anchor_loss_backward(
      "_batch_all_triplet_loss_backward", grad_sums, embeddings, labels, unit_grad, distance,
      [margin](const at::Tensor& block, const at::Tensor& labels_contiguous, const DeviceClasses& classes,
               const auto* grads, int64_t row_begin, auto* weights) {
        using scalar_t = std::remove_pointer_t<decltype(weights)>;
        launch_rows<scalar_t>(block, labels_contiguous, classes, grads, margin, row_begin, nullptr, nullptr, weights);
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(embedplug, CUDA, m) {
  m.impl("batch_all_triplet_loss_forward", &batch_all_triplet_loss_forward_cuda);
  m.impl("_batch_all_triplet_loss_backward", &batch_all_triplet_loss_backward_cuda);
}

}  // namespace cuda
}  // namespace embedplug
