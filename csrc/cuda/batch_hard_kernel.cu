// Batch-hard triplet mining fused with the pairwise distances on CUDA, and its sparse backward,
// mirroring csrc/cpu/batch_hard_kernel.cpp.
//
// Forward: per block of anchors one cuBLAS GEMM into a bounded [rows x N] buffer, then one thread
// block per anchor: each thread folds its columns into a BatchHardRowState (pairwise_rules.h),
// a cub::BlockReduce merges the states (a total order, so the result does not depend on the
// reduction tree) and resolve_batch_hard writes the row's three slots.
//
// Backward: the mined pairs (at most 3 per anchor) touch two rows each. Instead of scattering with
// atomics, the 6N touches are sorted by the row they touch (stable, so each row sees its touches
// in the CPU kernel's serial order: anchor by anchor, slot by slot, anchor side first) and one
// thread block per row sums them. No N x N work, no atomics.
#include <torch/library.h>

#include "cuda/pairwise_blocks.cuh"

namespace embedplug {
namespace cuda {
namespace {

template <typename scalar_t>
struct MergeRowStates {
  __device__ inline BatchHardRowState<scalar_t> operator()(const BatchHardRowState<scalar_t>& a,
                                                           const BatchHardRowState<scalar_t>& b) const {
    BatchHardRowState<scalar_t> merged = a;
    merged.merge(b);
    return merged;
  }
};

// One thread block per anchor row of a [rows x N] Gram block.
template <typename scalar_t>
__global__ void batch_hard_rows_kernel(const scalar_t* __restrict__ gram, const scalar_t* __restrict__ squared_norms,
                                       const int64_t* __restrict__ labels, DistanceKind kind, int64_t row_begin,
                                       int64_t n, scalar_t* __restrict__ out_distances,
                                       int64_t* __restrict__ out_indices) {
  using StateReduce = cub::BlockReduce<BatchHardRowState<scalar_t>, kThreadsPerBlock>;
  __shared__ typename StateReduce::TempStorage storage;
  const int64_t a = row_begin + blockIdx.x;
  const scalar_t* gram_row = gram + static_cast<int64_t>(blockIdx.x) * n;
  const scalar_t squared_norm_a = squared_norms ? squared_norms[a] : scalar_t(0);
  const int64_t label_a = labels[a];
  BatchHardRowState<scalar_t> state = BatchHardRowState<scalar_t>::empty();
  for (int64_t b = threadIdx.x; b < n; b += blockDim.x) {
    const scalar_t squared_norm_b = squared_norms ? squared_norms[b] : scalar_t(0);
    const scalar_t distance = finish_distance_entry(kind, gram_row[b], squared_norm_a, squared_norm_b, a, b);
    state.update(distance, b, !is_negative_pair(label_a, labels[b]), a == b);
  }
  state = StateReduce(storage).Reduce(state, MergeRowStates<scalar_t>());
  if (threadIdx.x == 0) resolve_batch_hard(state, a, out_distances + 3 * a, out_indices + 3 * a);
}

void check_mining_inputs(const at::Tensor& embeddings, const at::Tensor& labels) {
  check_cuda_embeddings_and_labels("batch_hard_mining", embeddings, labels);
}

std::tuple<at::Tensor, at::Tensor> batch_hard_mining_cuda(const at::Tensor& embeddings, const at::Tensor& labels,
                                                          c10::string_view distance) {
  check_mining_inputs(embeddings, labels);
  const at::cuda::CUDAGuard guard(embeddings.device());
  const DistanceKind kind = parse_distance(std::string_view(distance.data(), distance.size()));
  const int64_t n = embeddings.size(0);
  auto out_distances = at::empty({n, 3}, embeddings.options());
  auto out_indices = at::empty({n, 3}, labels.options());
  const auto labels_contiguous = labels.contiguous();
  AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "batch_hard_mining_cuda", [&] {
    // The CPU kernel's operand (ATen squared norms), so both backends finish distances alike.
    const GemmOperand operand = prepare_operand(embeddings.detach(), kind);
    const scalar_t* squared_norms =
        operand.squared_norms.defined() ? operand.squared_norms.data_ptr<scalar_t>() : nullptr;
    const int64_t block = row_block_size(n, n);
    auto buffer = at::empty({block, n}, operand.rows.options());
    for (int64_t row_begin = 0; row_begin < n; row_begin += block) {
      const int64_t rows = std::min(block, n - row_begin);
      auto gram = buffer.narrow(0, 0, rows);
      at::mm_out(gram, operand.rows.narrow(0, row_begin, rows), operand.rows.t());
      batch_hard_rows_kernel<scalar_t><<<static_cast<unsigned>(rows), kThreadsPerBlock, 0,
                                         at::cuda::getCurrentCUDAStream()>>>(
          gram.data_ptr<scalar_t>(), squared_norms, labels_contiguous.data_ptr<int64_t>(), kind, row_begin, n,
          out_distances.data_ptr<scalar_t>(), out_indices.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {out_distances, out_indices};
}

// <u_a, u_b> of every mined cosine pair f = 3a + slot (0 where the slot is unused), summed over
// D in order as the CPU kernel does. One thread per pair.
template <typename scalar_t>
__global__ void mined_cosines_kernel(const scalar_t* __restrict__ unit_rows, const int64_t* __restrict__ indices,
                                     int64_t pairs, int64_t dim, scalar_t* __restrict__ cosines) {
  const int64_t f = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (f >= pairs) return;
  const int64_t b = indices[f];
  scalar_t cosine = 0;
  if (b >= 0) {
    const scalar_t* ua = unit_rows + (f / 3) * dim;
    const scalar_t* ub = unit_rows + b * dim;
    for (int64_t t = 0; t < dim; ++t) cosine += ua[t] * ub[t];
  }
  cosines[f] = cosine;
}

// One thread block per embedding row r, threads over D: the sum over the touches of row r,
// touch_ids[touch_begin[r] .. touch_begin[r + 1]) with touch id 2f + side (side 0: r is pair f's
// anchor, side 1: r is its mined column), in that order.
template <typename scalar_t>
__global__ void mined_pair_rows_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ unit_rows,
                                       const scalar_t* __restrict__ norms, const scalar_t* __restrict__ cosines,
                                       const scalar_t* __restrict__ grads, const scalar_t* __restrict__ distances,
                                       const int64_t* __restrict__ indices, const int64_t* __restrict__ touch_ids,
                                       const int64_t* __restrict__ touch_begin, DistanceKind kind, int64_t dim,
                                       scalar_t* __restrict__ grad_x) {
  const int64_t r = blockIdx.x;
  const int64_t begin = touch_begin[r];
  const int64_t end = touch_begin[r + 1];
  for (int64_t t = threadIdx.x; t < dim; t += blockDim.x) {
    scalar_t acc = 0;
    for (int64_t s = begin; s < end; ++s) {
      const int64_t touch = touch_ids[s];
      const int64_t f = touch / 2;
      const bool anchor_side = touch % 2 == 0;
      const int64_t a = f / 3;
      const int64_t b = indices[f];
      const scalar_t d = distances[f];
      if (d != d) {
        // A NaN slot poisons its anchor's row (and leaves its column alone), as on CPU.
        if (anchor_side) acc = std::numeric_limits<scalar_t>::quiet_NaN();
        continue;
      }
      const scalar_t grad = grads[f];
      if (grad == scalar_t(0)) continue;
      if (kind == DistanceKind::kCosine) {
        const int64_t self = anchor_side ? a : b;
        const int64_t other = anchor_side ? b : a;
        const scalar_t scale = cosine_pair_scale(grad, norms[self]);
        acc += cosine_pair_term(scale, norms[self], unit_rows[self * dim + t], unit_rows[other * dim + t], cosines[f]);
        continue;
      }
      const scalar_t coefficient = mined_pair_coefficient(kind, grad, d);
      if (coefficient == scalar_t(0)) continue;
      const scalar_t step = coefficient * (x[a * dim + t] - x[b * dim + t]);
      acc += anchor_side ? step : -step;
    }
    grad_x[r * dim + t] = acc;
  }
}

at::Tensor batch_hard_mining_backward_cuda(const at::Tensor& grad_distances, const at::Tensor& embeddings,
                                           const at::Tensor& distances, const at::Tensor& indices,
                                           c10::string_view distance) {
  check_floating_inputs("_batch_hard_mining_backward", {{"embeddings", &embeddings}});
  check_floating_inputs("_batch_hard_mining_backward", {{"grad_distances", &grad_distances}});
  check_floating_inputs("_batch_hard_mining_backward", {{"distances", &distances}});
  check_int64_input("_batch_hard_mining_backward", "indices", indices);
  TORCH_CHECK(embeddings.dim() == 2, "embedplug: embeddings must be 2-D");
  const int64_t n = embeddings.size(0);
  const int64_t dim = embeddings.size(1);
  TORCH_CHECK(grad_distances.sizes() == distances.sizes() && distances.dim() == 2 && distances.size(0) == n &&
                  distances.size(1) == 3,
              "embedplug: grad_distances and distances must be [N, 3]");
  TORCH_CHECK(indices.sizes() == distances.sizes() && indices.scalar_type() == at::kLong,
              "embedplug: indices must be int64 [N, 3]");
  check_same_cuda_device("_batch_hard_mining_backward", {{"embeddings", &embeddings},
                                                         {"grad_distances", &grad_distances},
                                                         {"distances", &distances},
                                                         {"indices", &indices}});
  const at::cuda::CUDAGuard guard(embeddings.device());
  const DistanceKind kind = parse_distance(std::string_view(distance.data(), distance.size()));
  const auto x = embeddings.detach().contiguous();
  auto grad_x = at::empty_like(x);
  if (n == 0) return grad_x;
  const auto idx = indices.contiguous().view({-1});
  TORCH_CHECK(!idx.ge(n).any().item<bool>(), "embedplug: a mined index is out of range for N = ", n);

  // Touch 2f + side of pair f = 3a + slot: row a (side 0) and row indices[f] (side 1); unused
  // slots go past the last row. A stable sort by row keeps the touch order within each row.
  const auto valid = idx.ge(0);
  const auto anchors = at::arange(3 * n, idx.options()).div(3, "floor");
  const auto past_end = at::full_like(idx, n);
  const auto touch_rows = at::stack({at::where(valid, anchors, past_end), at::where(valid, idx, past_end)}, 1).view({-1});
  const auto [sorted_rows, touch_ids] = at::sort(touch_rows, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const auto touch_begin = at::searchsorted(sorted_rows, at::arange(n + 1, idx.options())).contiguous();

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_hard_mining_backward_cuda", [&] {
    const auto grad_d = grad_distances.to(x.scalar_type()).contiguous();
    const auto dist = distances.to(x.scalar_type()).contiguous();
    at::Tensor unit_rows, norms, cosines;
    const auto stream = at::cuda::getCurrentCUDAStream();
    if (kind == DistanceKind::kCosine) {
      norms = x.norm(2, 1).contiguous();
      unit_rows = (x / norms.clamp_min(kNormalizeEps).unsqueeze(1)).contiguous();
      cosines = at::empty({3 * n}, x.options());
      mined_cosines_kernel<scalar_t><<<static_cast<unsigned>(ceil_div(3 * n, kThreadsPerBlock)), kThreadsPerBlock, 0,
                                       stream>>>(unit_rows.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), 3 * n, dim,
                                                 cosines.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (dim == 0) return;
    mined_pair_rows_kernel<scalar_t><<<static_cast<unsigned>(n), kThreadsPerBlock, 0, stream>>>(
        x.data_ptr<scalar_t>(), unit_rows.defined() ? unit_rows.data_ptr<scalar_t>() : nullptr,
        norms.defined() ? norms.data_ptr<scalar_t>() : nullptr,
        cosines.defined() ? cosines.data_ptr<scalar_t>() : nullptr, grad_d.data_ptr<scalar_t>(),
        dist.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), touch_ids.contiguous().data_ptr<int64_t>(),
        touch_begin.data_ptr<int64_t>(), kind, dim, grad_x.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(embedplug, CUDA, m) {
  m.impl("batch_hard_mining", &batch_hard_mining_cuda);
  m.impl("_batch_hard_mining_backward", &batch_hard_mining_backward_cuda);
}

}  // namespace cuda
}  // namespace embedplug
