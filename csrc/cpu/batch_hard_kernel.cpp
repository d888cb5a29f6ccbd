// Batch-hard triplet mining fused with the pairwise distances, and its sparse backward.
//
// Forward: per anchor a, sentence-transformers' BatchHardTripletLoss needs
//   hardest positive  = max_j mask_pos[a,j] * d[a,j]
//   hardest negative  = min_j (d[a,j] + rowmax_a * (1 - mask_neg[a,j]))
// The second form means a same-label column can win over the true negatives (always, when the
// anchor has no negative), in which case the gradient flows to that column *and* to the row
// maximum. We reproduce it exactly by keeping four running arg-extremes per row (hardest
// positive, nearest negative, nearest same-label column, row maximum) and resolving them at the
// end; each Gram tile is computed once and folded into both its rows' and its columns' states.
//
// Backward: the loss touched at most three pairs per anchor, so the gradient is O(N * D):
// each pair's distance derivative is scattered onto its two rows. No N x N work.
#include <torch/library.h>

#include "cpu/pairwise_tiles.h"
#include "op_input_checks.h"

namespace embedplug {
namespace cpu {
namespace {

// 256 x 256 fp32 Gram blocks (256 KiB) stay in L2 while the epilogue reads them; larger tiles
// gain little GEMM efficiency at D in the hundreds.
constexpr int64_t kTileSize = 256;

void check_mining_inputs(const at::Tensor& embeddings, const at::Tensor& labels) {
  check_embeddings_and_labels(embeddings, labels, "CPU");
}

template <typename scalar_t>
void mine_batch_hard(const GemmOperand& operand, const int64_t* labels, DistanceKind kind,
                     scalar_t* out_distances, int64_t* out_indices) {
  const int64_t n = operand.rows.size(0);
  const scalar_t* squared_norms =
      operand.squared_norms.defined() ? operand.squared_norms.data_ptr<scalar_t>() : nullptr;
  const int num_threads = at::get_num_threads();
  // One state vector per thread: tiles update rows they do not own, and merging afterwards is
  // cheaper and more deterministic than locking.
  std::vector<std::vector<BatchHardRowState<scalar_t>>> states(
      num_threads, std::vector<BatchHardRowState<scalar_t>>(n, BatchHardRowState<scalar_t>::empty()));

  for_each_gram_tile<scalar_t>(operand.rows, kTileSize, [&](const TilePair& pair,
                                                            const scalar_t* gram, int thread_id) {
    auto& state = states[thread_id];
    const int64_t tile_cols = pair.col_end - pair.col_begin;
    const bool diagonal_tile = pair.on_diagonal();
    for (int64_t a = pair.row_begin; a < pair.row_end; ++a) {
      const scalar_t* gram_row = gram + (a - pair.row_begin) * tile_cols;
      const scalar_t squared_norm_a = squared_norms ? squared_norms[a] : scalar_t(0);
      const int64_t label_a = labels[a];
      BatchHardRowState<scalar_t> row = state[a];
      for (int64_t b = pair.col_begin; b < pair.col_end; ++b) {
        const scalar_t squared_norm_b = squared_norms ? squared_norms[b] : scalar_t(0);
        const scalar_t distance =
            finish_distance_entry(kind, gram_row[b - pair.col_begin], squared_norm_a, squared_norm_b, a, b);
        const bool same_label = !is_negative_pair(label_a, labels[b]);
        row.update(distance, b, same_label, a == b);
        if (!diagonal_tile) state[b].update(distance, a, same_label, false);
      }
      state[a] = row;
    }
  });

  at::parallel_for(0, n, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t a = begin; a < end; ++a) {
      BatchHardRowState<scalar_t> row = states[0][a];
      for (int t = 1; t < num_threads; ++t) row.merge(states[t][a]);
      resolve_batch_hard(row, a, out_distances + 3 * a, out_indices + 3 * a);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> batch_hard_mining_cpu(const at::Tensor& embeddings,
                                                         const at::Tensor& labels,
                                                         c10::string_view distance) {
  check_floating_inputs("batch_hard_mining", {{"embeddings", &embeddings}});
  check_int64_input("batch_hard_mining", "labels", labels);
  check_mining_inputs(embeddings, labels);
  TORCH_CHECK(embeddings.device().is_cpu(), "embedplug: batch_hard_mining_cpu got a non-CPU tensor");
  const DistanceKind kind = parse_distance(std::string_view(distance.data(), distance.size()));
  const int64_t n = embeddings.size(0);
  auto out_distances = at::empty({n, 3}, embeddings.options());
  auto out_indices = at::empty({n, 3}, labels.options());
  const auto labels_contiguous = labels.contiguous();
  AT_DISPATCH_FLOATING_TYPES(embeddings.scalar_type(), "batch_hard_mining_cpu", [&] {
    // Detached: the tile GEMMs run on worker threads, which do not inherit autograd guards, and
    // the op carries its own backward.
    const GemmOperand operand = prepare_operand(embeddings.detach(), kind);
    mine_batch_hard<scalar_t>(operand, labels_contiguous.data_ptr<int64_t>(), kind,
                              out_distances.data_ptr<scalar_t>(),
                              out_indices.data_ptr<int64_t>());
  });
  return {out_distances, out_indices};
}

// d/dx of one mined pair distance d(a, b), scaled by `grad`, added onto rows a and b.
template <typename scalar_t>
void scatter_pair_gradient(DistanceKind kind, const scalar_t* x, const scalar_t* unit_rows,
                           const scalar_t* norms, int64_t dim, int64_t a, int64_t b,
                           scalar_t grad, scalar_t distance, scalar_t* grad_x) {
  const scalar_t* xa = x + a * dim;
  const scalar_t* xb = x + b * dim;
  scalar_t* ga = grad_x + a * dim;
  scalar_t* gb = grad_x + b * dim;
  if (kind == DistanceKind::kCosine) {
    const scalar_t* ua = unit_rows + a * dim;
    const scalar_t* ub = unit_rows + b * dim;
    scalar_t cosine = 0;
    for (int64_t t = 0; t < dim; ++t) cosine += ua[t] * ub[t];
    const scalar_t scale_a = cosine_pair_scale(grad, norms[a]);
    const scalar_t scale_b = cosine_pair_scale(grad, norms[b]);
    for (int64_t t = 0; t < dim; ++t) {
      ga[t] += cosine_pair_term(scale_a, norms[a], ua[t], ub[t], cosine);
      gb[t] += cosine_pair_term(scale_b, norms[b], ub[t], ua[t], cosine);
    }
    return;
  }
  const scalar_t coefficient = mined_pair_coefficient(kind, grad, distance);
  if (coefficient == scalar_t(0)) return;
  for (int64_t t = 0; t < dim; ++t) {
    const scalar_t step = coefficient * (xa[t] - xb[t]);
    ga[t] += step;
    gb[t] -= step;
  }
}

at::Tensor batch_hard_mining_backward_cpu(const at::Tensor& grad_distances,
                                          const at::Tensor& embeddings,
                                          const at::Tensor& distances, const at::Tensor& indices,
                                          c10::string_view distance) {
  // The gradients are cast to the embeddings' dtype below, so each only needs to be floating.
  check_floating_inputs("_batch_hard_mining_backward", {{"embeddings", &embeddings}});
  check_floating_inputs("_batch_hard_mining_backward", {{"grad_distances", &grad_distances}});
  check_floating_inputs("_batch_hard_mining_backward", {{"distances", &distances}});
  check_int64_input("_batch_hard_mining_backward", "indices", indices);
  TORCH_CHECK(embeddings.dim() == 2, "embedplug: embeddings must be 2-D");
  const int64_t n = embeddings.size(0);
  const int64_t dim = embeddings.size(1);
  TORCH_CHECK(grad_distances.sizes() == distances.sizes() && distances.dim() == 2 &&
                  distances.size(0) == n && distances.size(1) == 3,
              "embedplug: grad_distances and distances must be [N, 3]");
  TORCH_CHECK(indices.sizes() == distances.sizes() && indices.scalar_type() == at::kLong,
              "embedplug: indices must be int64 [N, 3]");
  const DistanceKind kind = parse_distance(std::string_view(distance.data(), distance.size()));
  const auto x = embeddings.detach().contiguous();
  auto grad_x = at::zeros_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_hard_mining_backward_cpu", [&] {
    const auto grad_d = grad_distances.to(x.scalar_type()).contiguous();
    const auto dist = distances.to(x.scalar_type()).contiguous();
    const auto idx = indices.contiguous();
    at::Tensor unit_rows, norms;
    if (kind == DistanceKind::kCosine) {
      norms = x.norm(2, 1).contiguous();
      unit_rows = (x / norms.clamp_min(kNormalizeEps).unsqueeze(1)).contiguous();
    }
    const scalar_t* x_ptr = x.data_ptr<scalar_t>();
    const scalar_t* unit_ptr = unit_rows.defined() ? unit_rows.data_ptr<scalar_t>() : nullptr;
    const scalar_t* norm_ptr = norms.defined() ? norms.data_ptr<scalar_t>() : nullptr;
    const scalar_t* grad_ptr = grad_d.data_ptr<scalar_t>();
    const scalar_t* dist_ptr = dist.data_ptr<scalar_t>();
    const int64_t* idx_ptr = idx.data_ptr<int64_t>();
    scalar_t* out = grad_x.data_ptr<scalar_t>();
    // Serial: pairs scatter into arbitrary rows, and 3 * N * D multiply-adds are negligible next
    // to the forward's N^2 * D / 2.
    for (int64_t a = 0; a < n; ++a) {
      for (int64_t slot = 0; slot < 3; ++slot) {
        const int64_t b = idx_ptr[3 * a + slot];
        if (b < 0) continue;
        TORCH_CHECK(b < n, "embedplug: mined index ", b, " out of range for N = ", n);
        const scalar_t grad = grad_ptr[3 * a + slot];
        const scalar_t d = dist_ptr[3 * a + slot];
        if (std::isnan(d)) {
          for (int64_t t = 0; t < dim; ++t) out[a * dim + t] = std::numeric_limits<scalar_t>::quiet_NaN();
          continue;
        }
        if (grad == scalar_t(0)) continue;
        scatter_pair_gradient<scalar_t>(kind, x_ptr, unit_ptr, norm_ptr, dim, a, b, grad, d, out);
      }
    }
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(embedplug, CPU, m) {
  m.impl("batch_hard_mining", &batch_hard_mining_cpu);
  m.impl("_batch_hard_mining_backward", &batch_hard_mining_backward_cpu);
}

}  // namespace cpu
}  // namespace embedplug
