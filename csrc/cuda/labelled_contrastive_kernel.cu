// CUDA kernels of the label-aware contrastive losses (SupCon, MultiSimilarity with or without
// MultiSimilarityMiner, Circle); mirrors csrc/cpu/labelled_contrastive_kernel.cpp and runs the same
// rules (csrc/labelled_contrastive_rules.h).
//
// Per block of rows: one cuBLAS GEMM (at::mm_out, current stream) writes the rows' cosine
// similarities against every column into a reused buffer of row_block_size() x N; then one thread
// block per row runs the rule's four sweeps with cub::BlockReduce (scan, group maxima, exp sums,
// weights) and, when a gradient is wanted, overwrites the row with d loss_i / d s_ij times the
// anchor's weight. The gradient on the unit rows is then two GEMMs per block, W . U for the block's
// rows and W^T . U_block for every column, issued in order on one stream: no atomics, so results
// are deterministic. The chain rule through normalize is applied once at the end.
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include <optional>

#include "cuda/cuda_common.cuh"
#include "labelled_contrastive_common.h"
#include "labelled_contrastive_rules.h"
#include "op_input_checks.h"

namespace embedplug {
namespace cuda {
namespace {

using namespace labelled_contrastive;
using rules::GroupSums;
using rules::RowResult;
using rules::RowScan;

template <typename scalar_t>
struct MergeScans {
  __device__ RowScan<scalar_t> operator()(const RowScan<scalar_t>& a, const RowScan<scalar_t>& b) const {
    return rules::merge_scans(a, b);
  }
};

struct MaxOp {
  template <typename T>
  __device__ T operator()(const T& a, const T& b) const {
    return rules::rule_max(a, b);
  }
};

// Row weight modes: the incoming gradient per anchor, or 1 on the anchors the reducer counts.
enum class RowWeights : int { kNone = 0, kUnitOnCounted = 1, kIncoming = 2 };

template <typename scalar_t>
__global__ void contrastive_rows_kernel(ContrastiveParams<scalar_t> p, scalar_t* similarities, const int64_t* labels,
                                        int64_t n, int64_t row_begin, RowWeights mode, const scalar_t* incoming,
                                        scalar_t* losses, int64_t* positive_pairs, int64_t* negative_pairs) {
  using ScanReduce = cub::BlockReduce<RowScan<scalar_t>, kThreadsPerBlock>;
  using ScalarReduce = cub::BlockReduce<scalar_t, kThreadsPerBlock>;
  using CountReduce = cub::BlockReduce<int64_t, kThreadsPerBlock>;
  __shared__ union {
    typename ScanReduce::TempStorage scan;
    typename ScalarReduce::TempStorage scalar;
    typename CountReduce::TempStorage count;
  } temp;
  // The row's shared state as raw storage: __shared__ variables cannot have constructors.
  __shared__ alignas(RowScan<scalar_t>) unsigned char scan_storage[sizeof(RowScan<scalar_t>)];
  __shared__ alignas(GroupSums<scalar_t>) unsigned char sums_storage[sizeof(GroupSums<scalar_t>)];
  __shared__ alignas(RowResult<scalar_t>) unsigned char result_storage[sizeof(RowResult<scalar_t>)];
  __shared__ scalar_t row_weight;
  auto& row_scan = *reinterpret_cast<RowScan<scalar_t>*>(scan_storage);
  auto& row_sums = *reinterpret_cast<GroupSums<scalar_t>*>(sums_storage);
  auto& row_result = *reinterpret_cast<RowResult<scalar_t>*>(result_storage);

  const int64_t a = row_begin + blockIdx.x;
  scalar_t* row = similarities + static_cast<int64_t>(blockIdx.x) * n;
  const int64_t label = labels[a];

  // Sweep 1: counts, row maximum, hardest positive / negative, non-finite.
  RowScan<scalar_t> scan;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) rules::scan_column(scan, row[j], j == a, labels[j] == label);
  const RowScan<scalar_t> scanned = ScanReduce(temp.scan).Reduce(scan, MergeScans<scalar_t>());
  if (threadIdx.x == 0) row_scan = scanned;
  __syncthreads();
  scan = row_scan;

  // Sweep 2: each group's maximum logit and kept count, SupCon's sum of positive logits.
  scalar_t maximum[2] = {rules::group_maximum_start(p), rules::group_maximum_start(p)};
  int64_t kept[2] = {0, 0};
  scalar_t positive_logit_sum = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const scalar_t s = row[j];
    const bool same_label = labels[j] == label;
    const int32_t g = rules::column_group(p, scan, s, j == a, same_label);
    if (g == rules::kNoGroup) continue;
    const scalar_t logit = rules::column_logit(p, scan, s, g);
    maximum[g] = rules::rule_max(maximum[g], logit);
    ++kept[g];
    if (same_label) positive_logit_sum += logit;
  }
  GroupSums<scalar_t> sums;
  if (threadIdx.x == 0) row_sums = sums;
  for (int g = 0; g < 2; ++g) {
    const scalar_t group_maximum = ScalarReduce(temp.scalar).Reduce(maximum[g], MaxOp());
    __syncthreads();
    const int64_t group_kept = CountReduce(temp.count).Sum(kept[g]);
    __syncthreads();
    if (threadIdx.x == 0) {
      row_sums.maximum[g] = group_maximum;
      row_sums.kept[g] = group_kept;
    }
  }
  const scalar_t positive_total = ScalarReduce(temp.scalar).Sum(positive_logit_sum);
  if (threadIdx.x == 0) row_sums.positive_logit_sum = positive_total;
  __syncthreads();
  sums = row_sums;

  // Sweep 3: the exp sums.
  scalar_t exp_sum[2] = {0, 0};
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const scalar_t s = row[j];
    const int32_t g = rules::column_group(p, scan, s, j == a, labels[j] == label);
    if (g == rules::kNoGroup) continue;
    exp_sum[g] += rules::shifted_exp(rules::column_logit(p, scan, s, g), sums.maximum[g]);
  }
  for (int g = 0; g < 2; ++g) {
    const scalar_t total = ScalarReduce(temp.scalar).Sum(exp_sum[g]);
    __syncthreads();
    if (threadIdx.x == 0) row_sums.exp_sum[g] = rules::group_sum_start(p, sums.maximum[g]) + total;
  }
  if (threadIdx.x == 0) {
    const RowResult<scalar_t> result = rules::finish_row(p, scan, row_sums);
    row_result = result;
    losses[a] = result.loss;
    positive_pairs[a] = result.positive_pairs;
    negative_pairs[a] = result.negative_pairs;
    scalar_t weight = scalar_t(0);
    if (mode == RowWeights::kUnitOnCounted) weight = rules::counted_by_reducer(p, result.positive_pairs, result.negative_pairs, result.loss) ? scalar_t(1) : scalar_t(0);
    if (mode == RowWeights::kIncoming) weight = incoming[a];
    row_weight = weight;
  }
  __syncthreads();
  if (mode == RowWeights::kNone) return;

  // Sweep 4: the row becomes weight * d loss / d s (0 outside every group, and for weight 0).
  sums = row_sums;
  const RowResult<scalar_t> result = row_result;
  const scalar_t weight = row_weight;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const scalar_t s = row[j];
    const bool same_label = labels[j] == label;
    const int32_t g = rules::column_group(p, scan, s, j == a, same_label);
    if (weight == scalar_t(0) || g == rules::kNoGroup) {
      row[j] = scalar_t(0);
      continue;
    }
    const scalar_t logit = rules::column_logit(p, scan, s, g);
    row[j] = weight * rules::column_weight(p, result, sums, s, logit, same_label, g);
  }
}

struct Outputs {
  at::Tensor losses, positive_pairs, negative_pairs, grad;
};

Outputs run_contrastive(const at::Tensor& embeddings, const at::Tensor& labels, const ContrastiveOptions& options,
                        RowWeights mode, const at::Tensor& incoming) {
  const auto x = embeddings.detach().contiguous();
  const auto labels_contiguous = labels.contiguous();
  const int64_t n = x.size(0);
  // normalize's x / max(|x|, eps), as PML's CosineSimilarity.
  const auto norms = x.norm(2, 1, true);
  const auto unit = x / norms.clamp_min(1e-12);
  Outputs out;
  out.losses = at::empty({n}, x.options());
  out.positive_pairs = at::empty({n}, x.options().dtype(at::kLong));
  out.negative_pairs = at::empty({n}, x.options().dtype(at::kLong));
  const bool want_grad = mode != RowWeights::kNone;
  at::Tensor grad_unit = want_grad ? at::zeros_like(x) : at::Tensor();
  const int64_t block = row_block_size(n, n);
  auto buffer = at::empty({block, n}, x.options());
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "labelled_contrastive_cuda", [&] {
    const ContrastiveParams<scalar_t> p = options.params<scalar_t>();
    const at::Tensor weights = mode == RowWeights::kIncoming ? incoming.to(x.scalar_type()).contiguous() : at::Tensor();
    for (int64_t row_begin = 0; row_begin < n; row_begin += block) {
      const int64_t rows = std::min(block, n - row_begin);
      auto similarities = buffer.narrow(0, 0, rows);
      const auto block_rows = unit.narrow(0, row_begin, rows);
      at::mm_out(similarities, block_rows, unit.t());
      contrastive_rows_kernel<scalar_t><<<static_cast<unsigned>(rows), kThreadsPerBlock, 0, stream>>>(
          p, similarities.data_ptr<scalar_t>(), labels_contiguous.data_ptr<int64_t>(), n, row_begin, mode,
          weights.defined() ? weights.data_ptr<scalar_t>() : nullptr, out.losses.data_ptr<scalar_t>(),
          out.positive_pairs.data_ptr<int64_t>(), out.negative_pairs.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (want_grad) {
        grad_unit.narrow(0, row_begin, rows).addmm_(similarities, unit);
        grad_unit.addmm_(similarities.t(), block_rows);
      }
    }
  });
  if (want_grad) {
    // d/dx of normalize: (g - u <u, g>) / |x| above eps; below it normalize divides by the constant eps.
    const auto projected = norms.ge(1e-12).to(x.scalar_type());
    const auto along = (unit * grad_unit).sum(1, true) * projected;
    out.grad = (grad_unit - unit * along) / norms.clamp_min(1e-12);
  }
  return out;
}

void check_inputs(const char* op, const at::Tensor& embeddings, const at::Tensor& labels) {
  check_floating_inputs(op, {{"embeddings", &embeddings}});
  check_int64_input(op, "labels", labels);
  check_same_cuda_device(op, {{"embeddings", &embeddings}, {"labels", &labels}});
  TORCH_CHECK(embeddings.dim() == 2, "embedplug: embeddings must be 2-D [N, D], got ", embeddings.dim(), "-D");
  TORCH_CHECK(embeddings.scalar_type() == at::kFloat || embeddings.scalar_type() == at::kDouble,
              "embedplug: the CUDA kernel takes float32 or float64 embeddings, got ", embeddings.scalar_type());
  TORCH_CHECK(embeddings.size(0) > 0, "embedplug: empty batch (N = 0)");
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == embeddings.size(0),
              "embedplug: labels must be 1-D with one label per embedding (", embeddings.size(0), "), got shape ",
              labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong, "embedplug: labels must be int64, got ", labels.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrastive_forward(const char* op, const at::Tensor& embeddings,
                                                                               const at::Tensor& labels,
                                                                               const ContrastiveOptions& options,
                                                                               bool compute_grad) {
  check_inputs(op, embeddings, labels);
  const at::cuda::CUDAGuard guard(embeddings.device());
  Outputs out = run_contrastive(embeddings, labels, options, compute_grad ? RowWeights::kUnitOnCounted : RowWeights::kNone,
                                at::Tensor());
  at::Tensor unit_grad = compute_grad ? out.grad : at::empty({0}, embeddings.options());
  return {out.losses, out.positive_pairs, out.negative_pairs, unit_grad};
}

at::Tensor contrastive_backward(const char* op, const at::Tensor& grad_losses, const at::Tensor& embeddings,
                                const at::Tensor& labels, const at::Tensor& losses, const at::Tensor& unit_grad,
                                const ContrastiveOptions& options) {
  check_inputs(op, embeddings, labels);
  check_floating_inputs(op, {{"grad_losses", &grad_losses}});
  check_same_cuda_device(op, {{"embeddings", &embeddings}, {"grad_losses", &grad_losses}, {"losses", &losses}});
  const at::cuda::CUDAGuard guard(embeddings.device());
  const int64_t n = embeddings.size(0);
  TORCH_CHECK(grad_losses.dim() == 1 && grad_losses.size(0) == n && losses.dim() == 1 && losses.size(0) == n,
              "embedplug: grad_losses and losses must be [N]");
  if (auto scaled = scaled_unit_gradient(grad_losses, labels, losses, unit_grad, options)) return *scaled;
  return run_contrastive(embeddings, labels, options, RowWeights::kIncoming, grad_losses.detach()).grad;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> supcon_loss_forward_cuda(const at::Tensor& embeddings,
                                                                                    const at::Tensor& labels,
                                                                                    double temperature, bool compute_grad) {
  return contrastive_forward("supcon_loss_forward", embeddings, labels, supcon_options(temperature), compute_grad);
}
at::Tensor supcon_loss_backward_cuda(const at::Tensor& grad_losses, const at::Tensor& embeddings, const at::Tensor& labels,
                                     const at::Tensor& losses, const at::Tensor& unit_grad, double temperature) {
  return contrastive_backward("_supcon_loss_backward", grad_losses, embeddings, labels, losses, unit_grad,
                              supcon_options(temperature));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> multi_similarity_loss_forward_cuda(
    const at::Tensor& embeddings, const at::Tensor& labels, double alpha, double beta, double base,
    std::optional<double> mining_epsilon, bool compute_grad) {
  return contrastive_forward("multi_similarity_loss_forward", embeddings, labels,
                             multi_similarity_options(alpha, beta, base, mining_epsilon), compute_grad);
}
at::Tensor multi_similarity_loss_backward_cuda(const at::Tensor& grad_losses, const at::Tensor& embeddings,
                                               const at::Tensor& labels, const at::Tensor& losses,
                                               const at::Tensor& unit_grad, double alpha, double beta, double base,
                                               std::optional<double> mining_epsilon) {
  return contrastive_backward("_multi_similarity_loss_backward", grad_losses, embeddings, labels, losses, unit_grad,
                              multi_similarity_options(alpha, beta, base, mining_epsilon));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> circle_loss_forward_cuda(const at::Tensor& embeddings,
                                                                                    const at::Tensor& labels, double m,
                                                                                    double gamma, bool compute_grad) {
  return contrastive_forward("circle_loss_forward", embeddings, labels, circle_options(m, gamma), compute_grad);
}
at::Tensor circle_loss_backward_cuda(const at::Tensor& grad_losses, const at::Tensor& embeddings, const at::Tensor& labels,
                                     const at::Tensor& losses, const at::Tensor& unit_grad, double m, double gamma) {
  return contrastive_backward("_circle_loss_backward", grad_losses, embeddings, labels, losses, unit_grad,
                              circle_options(m, gamma));
}

}  // namespace

TORCH_LIBRARY_IMPL(embedplug, CUDA, m) {
  m.impl("supcon_loss_forward", &supcon_loss_forward_cuda);
  m.impl("_supcon_loss_backward", &supcon_loss_backward_cuda);
  m.impl("multi_similarity_loss_forward", &multi_similarity_loss_forward_cuda);
  m.impl("_multi_similarity_loss_backward", &multi_similarity_loss_backward_cuda);
  m.impl("circle_loss_forward", &circle_loss_forward_cuda);
  m.impl("_circle_loss_backward", &circle_loss_backward_cuda);
}

}  // namespace cuda
}  // namespace embedplug
