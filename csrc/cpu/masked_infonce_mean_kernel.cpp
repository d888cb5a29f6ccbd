// The mean masked InfoNCE loss with its gradient computed in the same pass: the kernel the losses
// call (GISTEmbedLoss, MultipleNegativesRankingLoss and their cached forms reduce with a mean).
//
// Which entries a row's softmax keeps is exactly masked_infonce's (masked_infonce_kernel.cpp).
// What differs is the schedule. masked_infonce keeps only O(N) state and recomputes every tile in
// its backward: per student block 4 GEMMs (forward, recompute, two gradient products) and each
// guide block twice. Here a thread owns a strip of rows x (all columns of every block) (128 rows,
// 64 past 32K columns: a few MiB, never N x N), so a row's log-sum-exp is known before the strip
// is discarded: the strip becomes softmax probabilities in place and both gradient products run
// on it at once. That is the GEMM floor of an exact method: per student block one GEMM forward
// and two for the gradient, per guide block one. Because the loss is a mean, d loss / d sim_ij is
// known up to the incoming scalar gradient, which the autograd formula applies afterwards
// (grad_output * saved gradient), as fused linear cross-entropy kernels do.
//
// MultipleNegativesRankingLoss's options (masked_infonce_mnrl_rules.h) change two steps: the
// query-to-doc tiles get the hardness term right after their masked logits are written, and the
// row's softmax is taken per group of blocks (each block its own group per direction), which only
// changes the maxima, the sums and the gradient coefficient per group.
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "cpu/masked_infonce_common.h"
#include "op_input_checks.h"
#include "masked_infonce_mnrl_rules.h"

namespace embedplug {
namespace cpu {
namespace {

using namespace infonce;
using infonce_mnrl::MnrlOptions;

// Strips of 128 rows while they stay within 16 MiB, so the per-strip gradient GEMMs (inner
// dimension = strip rows) keep a high arithmetic intensity against the [columns, D] accumulator
// they read and write; 64 rows past that.
int64_t strip_rows(int64_t total_columns, size_t element_size) {
  constexpr int64_t kLargeStripBytes = int64_t{16} << 20;
  return total_columns * static_cast<int64_t>(element_size) * 128 <= kLargeStripBytes ? 128 : 64;
}

template <typename scalar_t>
struct MeanInfoNCEResult {
  at::Tensor row_loss;  // [N]
  at::Tensor gradient;  // [N + M, D]: anchors' rows, then candidates'; undefined without compute_grad
};

// Adds the hardness term to the query-to-doc logits of rows [row_begin, row_begin + rows) and
// columns [column_begin, column_begin + cols) (rows tile_stride apart), from the raw similarities
// of the same entries (rows cols apart).
template <typename scalar_t>
void add_hardness(const MnrlOptions& mnrl, int64_t n, int64_t row_begin, int64_t rows, int64_t column_begin,
                  int64_t cols, scalar_t* tile, int64_t tile_stride, const scalar_t* similarity) {
  const scalar_t strength = static_cast<scalar_t>(mnrl.hardness_strength);
  const int64_t first_remainder = column_begin % n;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = row_begin + r;
    scalar_t* logits = tile + r * tile_stride;
    const scalar_t* row_similarity = similarity + r * cols;
    // column mod N, kept incrementally: one comparison per entry instead of a division.
    int64_t remainder = first_remainder;
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t j = column_begin + c;
      if (infonce_mnrl::hardness_applies(mnrl.hardness, remainder == i, j < n)) {
        logits[c] = infonce_mnrl::hardened_logit(logits[c], row_similarity[c], strength);
      }
      if (++remainder == n) remainder = 0;
    }
  }
}

template <typename scalar_t>
MeanInfoNCEResult<scalar_t> mean_infonce_strips(const InfoNCEInputs& inputs, const std::vector<SoftmaxBlock>& blocks,
                                                const InfoNCEOptions& options, const MnrlOptions& mnrl,
                                                bool compute_grad) {
  const GuideState<scalar_t> guide = make_guide_state<scalar_t>(inputs, options);
  const int64_t n = inputs.n, m = inputs.m, dim = inputs.anchors.size(1);
  const auto tensor_options = inputs.anchors.options();
  const scalar_t scale = static_cast<scalar_t>(options.scale);
  // d mean_i(loss_i) / d sim_ij = scale * softmax_ij / N.
  const scalar_t row_weight = scale / static_cast<scalar_t>(n);

  std::vector<int64_t> block_offset(blocks.size());
  int64_t total_columns = 0;
  for (size_t b = 0; b < blocks.size(); ++b) {
    block_offset[b] = total_columns;
    total_columns += blocks[b].num_columns;
  }
  const int64_t rows_per_strip = strip_rows(total_columns, sizeof(scalar_t));
  const int64_t num_strips = (n + rows_per_strip - 1) / rows_per_strip;
  const int num_threads = at::get_num_threads();
  std::vector<at::Tensor> thread_gradients(num_threads);
  auto row_loss = at::empty({n}, tensor_options);
  scalar_t* row_loss_out = row_loss.template data_ptr<scalar_t>();
  const bool separate_guide = inputs.guided && !inputs.self_guided;
  const int num_blocks = static_cast<int>(blocks.size());
  const int groups = infonce_mnrl::partition_group_count(mnrl.partition, num_blocks);
  TORCH_INTERNAL_ASSERT(groups <= infonce_mnrl::kMaxGroups);

  at::parallel_for(0, num_strips, 1, [&](int64_t strip_begin, int64_t strip_end) {
    const int thread_id = at::get_thread_num();
    std::vector<scalar_t> strip(static_cast<size_t>(rows_per_strip * total_columns));
    std::vector<scalar_t> guide_buffer(separate_guide ? static_cast<size_t>(rows_per_strip * kTileSize) : 0);
    // The raw query-to-doc similarities of one column tile, which the hardness term reads after
    // the tile became logits.
    std::vector<scalar_t> similarity_buffer(mnrl.hardened() ? static_cast<size_t>(rows_per_strip * kTileSize) : 0);
    // row_coefficient[g * rows_per_strip + r]: group g's gradient coefficient of row r.
    std::vector<scalar_t> target_logit(rows_per_strip), row_coefficient(groups * rows_per_strip);
    at::Tensor& gradient = thread_gradients[thread_id];
    if (compute_grad && !gradient.defined()) gradient = at::zeros({n + m, dim}, tensor_options);

    for (int64_t strip_index = strip_begin; strip_index < strip_end; ++strip_index) {
      const int64_t row_begin = strip_index * rows_per_strip;
      const int64_t rows = std::min(rows_per_strip, n - row_begin);
      // Segment b of the strip is block b's [rows, num_columns] logits, row-major.
      auto segment_of = [&](size_t b) { return strip.data() + rows * block_offset[b]; };

      for (size_t b = 0; b < blocks.size(); ++b) {
        const SoftmaxBlock& block = blocks[b];
        const int64_t cols = block.num_columns;
        scalar_t* segment = segment_of(b);
        const auto& row_source = block.rows_are_positives ? inputs.candidates : inputs.anchors;
        const auto& column_source = block.columns_are_anchors ? inputs.anchors : inputs.candidates;
        auto segment_view = at::from_blob(segment, {rows, cols}, tensor_options);
        at::mm_out(segment_view, row_source.narrow(0, row_begin, rows), column_source.narrow(0, 0, cols).t());
        const EntryFilter<scalar_t> filter{block, guide, inputs.guided, n};
        // Block 0 is query-to-doc, the only block hardness weighting touches.
        const bool hardened = b == 0 && mnrl.hardened();
        if (separate_guide || hardened) {
          // The guide is only compared with thresholds, and the hardness term reads the raw
          // similarity: one L2-sized tile of each at a time.
          for (int64_t column_begin = 0; column_begin < cols; column_begin += kTileSize) {
            const int64_t tile_cols = std::min(kTileSize, cols - column_begin);
            scalar_t* tile = segment + column_begin;
            if (hardened) {
              for (int64_t r = 0; r < rows; ++r) {
                std::copy_n(tile + r * cols, tile_cols, similarity_buffer.data() + r * tile_cols);
              }
            }
            if (separate_guide) {
              const auto guide_rows = (block.rows_are_positives ? inputs.guide_candidates : inputs.guide_anchors)
                                          .narrow(0, row_begin, rows);
              const auto& guide_columns = block.columns_are_anchors ? inputs.guide_anchors : inputs.guide_candidates;
              auto guide_view = at::from_blob(guide_buffer.data(), {rows, tile_cols}, tensor_options);
              at::mm_out(guide_view, guide_rows, guide_columns.narrow(0, column_begin, tile_cols).t());
              write_masked_logits(filter, scale, row_begin, rows, column_begin, tile_cols, tile, guide_buffer.data(),
                                  cols, tile_cols);
            } else {
              write_masked_logits(filter, scale, row_begin, rows, column_begin, tile_cols, tile,
                                  inputs.self_guided ? tile : nullptr, cols, cols);
            }
            if (hardened) add_hardness(mnrl, n, row_begin, rows, column_begin, tile_cols, tile, cols,
                                       similarity_buffer.data());
          }
        } else {
          // Unguided, or self-guided: the similarity itself is the guide value, read before it is
          // overwritten.
          write_masked_logits(filter, scale, row_begin, rows, 0, cols, segment, inputs.self_guided ? segment : nullptr,
                              cols, cols);
        }
        if (b == 0) {
          // Block 0 is <a_i, candidates>: its column i is the target, the very logit in the softmax.
          for (int64_t r = 0; r < rows; ++r) target_logit[r] = segment[r * cols + row_begin + r];
        }
      }

      // Per softmax group (one for a joint partition, one per block per direction): row maxima
      // over the group's segments, raised segment by segment in the online log-sum-exp state the
      // CUDA kernel folds too (a NaN logit makes the group's maximum NaN, as amax would, and then
      // the whole row NaN), then the sums of exp(logit - max).
      std::vector<RunningLogSumExp<scalar_t>> group_state(groups * rows, RunningLogSumExp<scalar_t>::empty());
      at::Tensor group_sum[infonce_mnrl::kMaxGroups];
      for (int g = 0; g < groups; ++g) group_sum[g] = at::zeros({rows}, tensor_options);
      for (int b = 0; b < num_blocks; ++b) {
        const int g = infonce_mnrl::partition_group(mnrl.partition, b);
        auto segment_view = at::from_blob(segment_of(b), {rows, blocks[b].num_columns}, tensor_options);
        const auto segment_max = segment_view.amax(1).contiguous();
        const scalar_t* maxima = segment_max.template data_ptr<scalar_t>();
        for (int64_t r = 0; r < rows; ++r) group_state[g * rows + r].raise_maximum(maxima[r]);
      }
      std::vector<scalar_t> shift(groups * rows);
      for (int64_t s = 0; s < groups * rows; ++s) {
        shift[s] = infonce_mnrl::group_shift(group_state[s].nan_propagating_maximum());
      }
      for (int b = 0; b < num_blocks; ++b) {
        const int g = infonce_mnrl::partition_group(mnrl.partition, b);
        auto shift_view = at::from_blob(shift.data() + g * rows, {rows, 1}, tensor_options);
        auto segment_view = at::from_blob(segment_of(b), {rows, blocks[b].num_columns}, tensor_options);
        exp_without_underflow<scalar_t>(segment_view.add_(shift_view));
        group_sum[g].add_(segment_view.sum(1));
      }
      const scalar_t* sums[infonce_mnrl::kMaxGroups];
      for (int g = 0; g < groups; ++g) sums[g] = group_sum[g].template data_ptr<scalar_t>();
      for (int64_t r = 0; r < rows; ++r) {
        scalar_t row_maxima[infonce_mnrl::kMaxGroups], row_sums[infonce_mnrl::kMaxGroups];
        for (int g = 0; g < groups; ++g) {
          row_maxima[g] = group_state[g * rows + r].nan_propagating_maximum();
          row_sums[g] = sums[g][r];
          row_coefficient[g * rows_per_strip + r] =
              infonce_mnrl::group_gradient_coefficient(row_weight, row_sums[g], groups);
        }
        const scalar_t log_normalizer = infonce_mnrl::averaged_log_normalizer(row_maxima, row_sums, groups);
        row_loss_out[row_begin + r] = log_normalizer - target_logit[r];
      }
      if (!compute_grad) continue;

      // The strip now holds exp(logit - group max); times its group's coefficient it is d loss / d sim.
      for (int b = 0; b < num_blocks; ++b) {
        const SoftmaxBlock& block = blocks[b];
        const int64_t cols = block.num_columns;
        const int g = infonce_mnrl::partition_group(mnrl.partition, b);
        auto coefficient_view =
            at::from_blob(row_coefficient.data() + g * rows_per_strip, {rows, 1}, tensor_options);
        auto weights = at::from_blob(segment_of(b), {rows, cols}, tensor_options).mul_(coefficient_view);
        const auto& row_source = block.rows_are_positives ? inputs.candidates : inputs.anchors;
        const auto& column_source = block.columns_are_anchors ? inputs.anchors : inputs.candidates;
        const int64_t row_offset = block.rows_are_positives ? n : 0;
        const int64_t column_offset = block.columns_are_anchors ? 0 : n;
        gradient.narrow(0, row_offset + row_begin, rows).addmm_(weights, column_source.narrow(0, 0, cols));
        gradient.narrow(0, column_offset, cols).addmm_(weights.t(), row_source.narrow(0, row_begin, rows));
      }
    }
  });

  MeanInfoNCEResult<scalar_t> result{row_loss, at::Tensor()};
  if (!compute_grad) return result;
  at::Tensor total;
  for (const auto& gradient : thread_gradients) {
    if (!gradient.defined()) continue;
    total = total.defined() ? total.add_(gradient) : gradient;
  }
  if (!total.defined()) total = at::zeros({n + m, dim}, tensor_options);
  // The target term -scale * <a_i, p_i> of each row's loss.
  total.narrow(0, 0, n).add_(inputs.candidates.narrow(0, 0, n), -row_weight);
  total.narrow(0, n, n).add_(inputs.anchors, -row_weight);
  result.gradient = total;
  return result;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_infonce_mean_cpu(
    const at::Tensor& anchors, const at::Tensor& candidates, const std::optional<at::Tensor>& guide_anchors,
    const std::optional<at::Tensor>& guide_candidates, double scale, c10::string_view margin_strategy,
    double margin, bool anchor_anchor, bool positive_anchor, int64_t positive_candidate_columns, bool exclude_self,
    bool compute_grad, c10::string_view partition_mode, c10::string_view hardness_mode, double hardness_strength) {
  check_floating_inputs("masked_infonce_mean", {{"anchors", &anchors}, {"candidates", &candidates},
                                 {"guide_anchors", optional_tensor(guide_anchors)},
                                 {"guide_candidates", optional_tensor(guide_candidates)}});
  const MnrlOptions mnrl = infonce_mnrl::make_mnrl_options(partition_mode, hardness_mode, hardness_strength);
  const auto [options, inputs, blocks] =
      make_problem(anchors, candidates, guide_anchors, guide_candidates, scale, margin_strategy, margin,
                   anchor_anchor, positive_anchor, positive_candidate_columns, exclude_self);
  at::Tensor loss, grad_anchors, grad_candidates;
  AT_DISPATCH_FLOATING_TYPES(anchors.scalar_type(), "masked_infonce_mean_cpu", [&] {
    auto result = mean_infonce_strips<scalar_t>(inputs, blocks, options, mnrl, compute_grad);
    // The same reduction as loss.mean() on masked_infonce's per-row losses.
    loss = result.row_loss.mean();
    if (compute_grad) {
      grad_anchors = result.gradient.narrow(0, 0, inputs.n);
      // Outputs must not share storage (the schema promises fresh tensors).
      grad_candidates = result.gradient.narrow(0, inputs.n, inputs.m).clone();
    }
  });
  if (!compute_grad) {
    grad_anchors = at::empty({0, anchors.size(1)}, anchors.options());
    grad_candidates = at::empty({0, candidates.size(1)}, candidates.options());
  }
  return {loss, grad_anchors, grad_candidates};
}

}  // namespace

TORCH_LIBRARY_IMPL(embedplug, CPU, m) {
  m.impl("masked_infonce_mean", &masked_infonce_mean_cpu);
}

}  // namespace cpu
}  // namespace embedplug
