// Masked in-batch softmax cross-entropy (InfoNCE), fused with the similarity GEMMs: the kernel
// behind GISTEmbedLoss (guide-filtered false negatives) and MultipleNegativesRankingLoss.
//
// Row i has anchor a_i = anchors[i] and positive p_i = candidates[i]. Its softmax runs over the
// concatenation of up to four similarity blocks (see SoftmaxBlock), each entry
// scale * <row vector, column vector>; the loss is lse_i - scale * <a_i, p_i>.
// An entry is dropped from the softmax (logit -inf) when
//   * exclude_self and it pairs row i with its own column (aa: column i; pp: columns j = i mod N),
//   * or guide filtering is on and guide_sim(row, column) > threshold_i, where
//     threshold_i = t_i - margin (absolute) or t_i - |t_i| * margin (relative), t_i =
//     guide_sim(a_i, p_i), strict >, and the pair (a_i, p_i) itself is never dropped.
// The guide similarities come from separate guide embeddings or, with none given, from the
// student's own similarities (self-guided).
//
// Forward: parallel over row tiles; each column tile is one GEMM into a per-thread buffer
// (FAISS-style) followed by an epilogue that applies the masks and folds the tile into per-row
// online log-sum-exp state (flash-attention style). Only O(N) state survives: the per-row loss and
// log-normaliser. Backward: recomputes every tile, turns it into softmax probabilities with the
// saved log-normaliser, and accumulates grad_rows += Q C and grad_cols += Q^T R with tile GEMMs
// into per-thread gradient buffers that are summed at the end.
#include <torch/library.h>

#include <optional>

#include "cpu/masked_infonce_common.h"
#include "op_input_checks.h"

namespace embedplug {
namespace cpu {
namespace {

using namespace infonce;

// Calls visit(block, filter, row_begin, rows, column_begin, cols, student_tile, guide_tile, thread_id)
// for every (row tile, block, column tile), in parallel over row tiles (each row tile is owned by one
// thread), then row_tile_done(row_begin, rows). student_tile is the [rows x cols] GEMM of the block's
// student rows and columns, writable; guide_tile the guide's (the student tile itself when
// self-guided, nullptr when unguided).
template <typename scalar_t, typename Visit, typename RowTileDone>
void for_each_softmax_tile(const InfoNCEInputs& inputs, const std::vector<SoftmaxBlock>& blocks,
                           const GuideState<scalar_t>& guide, Visit&& visit, RowTileDone&& row_tile_done) {
  const int64_t n = inputs.n;
  const int64_t num_row_tiles = (n + kTileSize - 1) / kTileSize;
  const int num_threads = at::get_num_threads();
  std::vector<std::vector<scalar_t>> student_buffers(num_threads), guide_buffers(num_threads);
  at::parallel_for(0, num_row_tiles, 1, [&](int64_t tile_begin, int64_t tile_end) {
    const int thread_id = at::get_thread_num();
    auto& student_buffer = student_buffers[thread_id];
    auto& guide_buffer = guide_buffers[thread_id];
    student_buffer.resize(static_cast<size_t>(kTileSize * kTileSize));
    if (inputs.guided && !inputs.self_guided) guide_buffer.resize(static_cast<size_t>(kTileSize * kTileSize));
    for (int64_t row_tile = tile_begin; row_tile < tile_end; ++row_tile) {
      const int64_t row_begin = row_tile * kTileSize;
      const int64_t rows = std::min(kTileSize, n - row_begin);
      for (const SoftmaxBlock& block : blocks) {
        const EntryFilter<scalar_t> filter{block, guide, inputs.guided, n};
        const auto& row_source = block.rows_are_positives ? inputs.candidates : inputs.anchors;
        const auto& column_source = block.columns_are_anchors ? inputs.anchors : inputs.candidates;
        const auto student_rows = row_source.narrow(0, row_begin, rows);
        at::Tensor guide_rows, guide_columns;
        if (inputs.guided && !inputs.self_guided) {
          guide_rows = (block.rows_are_positives ? inputs.guide_candidates : inputs.guide_anchors)
                           .narrow(0, row_begin, rows);
          guide_columns = block.columns_are_anchors ? inputs.guide_anchors : inputs.guide_candidates;
        }
        for (int64_t column_begin = 0; column_begin < block.num_columns; column_begin += kTileSize) {
          const int64_t cols = std::min(kTileSize, block.num_columns - column_begin);
          auto student_tile = at::from_blob(student_buffer.data(), {rows, cols}, row_source.options());
          at::mm_out(student_tile, student_rows, column_source.narrow(0, column_begin, cols).t());
          const scalar_t* guide_tile = nullptr;
          if (inputs.self_guided) {
            guide_tile = student_buffer.data();
          } else if (inputs.guided) {
            auto guide_view = at::from_blob(guide_buffer.data(), {rows, cols}, guide_rows.options());
            at::mm_out(guide_view, guide_rows, guide_columns.narrow(0, column_begin, cols).t());
            guide_tile = guide_buffer.data();
          }
          visit(block, filter, row_begin, rows, column_begin, cols, student_buffer.data(), guide_tile, thread_id);
        }
      }
      row_tile_done(row_begin, rows);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> masked_infonce_cpu(
    const at::Tensor& anchors, const at::Tensor& candidates, const std::optional<at::Tensor>& guide_anchors,
    const std::optional<at::Tensor>& guide_candidates, double scale, c10::string_view margin_strategy,
    double margin, bool anchor_anchor, bool positive_anchor, int64_t positive_candidate_columns,
    bool exclude_self) {
  check_floating_inputs("masked_infonce", {{"anchors", &anchors}, {"candidates", &candidates},
                                 {"guide_anchors", optional_tensor(guide_anchors)},
                                 {"guide_candidates", optional_tensor(guide_candidates)}});
  const auto [options, inputs, blocks] =
      make_problem(anchors, candidates, guide_anchors, guide_candidates, scale, margin_strategy, margin,
                   anchor_anchor, positive_anchor, positive_candidate_columns, exclude_self);
  auto loss = at::empty({inputs.n}, anchors.options());
  auto log_normalizer = at::empty({inputs.n}, anchors.options());
  AT_DISPATCH_FLOATING_TYPES(anchors.scalar_type(), "masked_infonce_cpu", [&] {
    const GuideState<scalar_t> guide = make_guide_state<scalar_t>(inputs, options);
    const scalar_t tile_scale = static_cast<scalar_t>(scale);
    std::vector<RunningLogSumExp<scalar_t>> running(inputs.n, RunningLogSumExp<scalar_t>::empty());
    std::vector<scalar_t> target_logit(inputs.n);
    scalar_t* loss_out = loss.data_ptr<scalar_t>();
    scalar_t* log_normalizer_out = log_normalizer.data_ptr<scalar_t>();
    for_each_softmax_tile<scalar_t>(
        inputs, blocks, guide,
        [&](const SoftmaxBlock& block, const EntryFilter<scalar_t>& filter, int64_t row_begin, int64_t rows,
            int64_t column_begin, int64_t cols, scalar_t* tile, const scalar_t* guide_tile, int) {
          write_masked_logits(filter, tile_scale, row_begin, rows, column_begin, cols, tile, guide_tile, cols, cols);
          // The loss's target logit is the very value that enters the log-sum-exp.
          if (!block.rows_are_positives && !block.columns_are_anchors) {
            for (int64_t i = std::max(row_begin, column_begin); i < std::min(row_begin + rows, column_begin + cols); ++i) {
              target_logit[i] = tile[(i - row_begin) * cols + (i - column_begin)];
            }
          }
          // Online log-sum-exp: new per-row maxima, then one vectorised exp over the whole tile.
          std::vector<scalar_t> shift(rows);
          for (int64_t r = 0; r < rows; ++r) {
            RunningLogSumExp<scalar_t>& state = running[row_begin + r];
            const scalar_t* logits = tile + r * cols;
            scalar_t tile_maximum = -std::numeric_limits<scalar_t>::infinity();
            for (int64_t c = 0; c < cols; ++c) {
              state.saw_nan |= std::isnan(logits[c]);
              tile_maximum = std::max(tile_maximum, logits[c]);
            }
            shift[r] = state.raise_maximum(tile_maximum);
          }
          auto tile_view = at::from_blob(tile, {rows, cols}, inputs.anchors.options());
          auto shift_view = at::from_blob(shift.data(), {rows, 1}, inputs.anchors.options());
          exp_without_underflow<scalar_t>(tile_view.add_(shift_view));
          const auto row_sums = tile_view.sum(1);
          const scalar_t* sums = row_sums.data_ptr<scalar_t>();
          for (int64_t r = 0; r < rows; ++r) running[row_begin + r].add(sums[r]);
        },
        [&](int64_t row_begin, int64_t rows) {
          for (int64_t i = row_begin; i < row_begin + rows; ++i) {
            log_normalizer_out[i] = running[i].value();
            loss_out[i] = log_normalizer_out[i] - target_logit[i];
          }
        });
  });
  return {loss, log_normalizer};
}

std::tuple<at::Tensor, at::Tensor> masked_infonce_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& anchors, const at::Tensor& candidates,
    const std::optional<at::Tensor>& guide_anchors, const std::optional<at::Tensor>& guide_candidates,
    const at::Tensor& log_normalizer, double scale, c10::string_view margin_strategy, double margin,
    bool anchor_anchor, bool positive_anchor, int64_t positive_candidate_columns, bool exclude_self) {
  check_floating_inputs("_masked_infonce_backward",
                        {{"anchors", &anchors}, {"candidates", &candidates},
                         {"guide_anchors", optional_tensor(guide_anchors)},
                         {"guide_candidates", optional_tensor(guide_candidates)}});
  check_floating_inputs("_masked_infonce_backward", {{"grad_loss", &grad_loss}});
  check_floating_inputs("_masked_infonce_backward", {{"log_normalizer", &log_normalizer}});
  const auto [options, inputs, blocks] =
      make_problem(anchors, candidates, guide_anchors, guide_candidates, scale, margin_strategy, margin,
                   anchor_anchor, positive_anchor, positive_candidate_columns, exclude_self);
  const int64_t n = inputs.n;
  TORCH_CHECK(grad_loss.dim() == 1 && grad_loss.size(0) == n && log_normalizer.dim() == 1 &&
                  log_normalizer.size(0) == n,
              "embedplug: grad_loss and log_normalizer must be [N]");
  const int64_t dim = inputs.anchors.size(1);
  const int num_threads = at::get_num_threads();
  // Per-thread [N + M, D] gradient accumulators: anchor rows first, then candidate rows. Column
  // contributions land on rows other threads own, and summing afterwards beats locking.
  std::vector<at::Tensor> thread_gradients(num_threads);
  at::Tensor grad_anchors, grad_candidates;
  AT_DISPATCH_FLOATING_TYPES(anchors.scalar_type(), "masked_infonce_backward_cpu", [&] {
    const GuideState<scalar_t> guide = make_guide_state<scalar_t>(inputs, options);
    const scalar_t tile_scale = static_cast<scalar_t>(scale);
    const auto weights_tensor = grad_loss.to(anchors.scalar_type()).contiguous();
    const auto lse_tensor = log_normalizer.to(anchors.scalar_type()).contiguous();
    const auto row_weights = weights_tensor * tile_scale;
    for_each_softmax_tile<scalar_t>(
        inputs, blocks, guide,
        [&](const SoftmaxBlock& block, const EntryFilter<scalar_t>& filter, int64_t row_begin, int64_t rows,
            int64_t column_begin, int64_t cols, scalar_t* tile, const scalar_t* guide_tile, int thread_id) {
          // d loss_i / d sim_ij = weight_i * scale * softmax_ij, softmax_ij = exp(logit_ij - lse_i),
          // written over the similarity tile (dropped entries: exp(-inf) = 0).
          write_masked_logits(filter, tile_scale, row_begin, rows, column_begin, cols, tile, guide_tile, cols, cols);
          auto tile_view = at::from_blob(tile, {rows, cols}, inputs.anchors.options());
          exp_without_underflow<scalar_t>(tile_view.sub_(lse_tensor.narrow(0, row_begin, rows).unsqueeze(1)))
              .mul_(row_weights.narrow(0, row_begin, rows).unsqueeze(1));
          at::Tensor& gradient = thread_gradients[thread_id];
          if (!gradient.defined()) gradient = at::zeros({inputs.n + inputs.m, dim}, inputs.anchors.options());
          const auto q = at::from_blob(tile, {rows, cols}, inputs.anchors.options());
          const auto& row_source = block.rows_are_positives ? inputs.candidates : inputs.anchors;
          const auto& column_source = block.columns_are_anchors ? inputs.anchors : inputs.candidates;
          const int64_t row_offset = block.rows_are_positives ? inputs.n : 0;
          const int64_t column_offset = block.columns_are_anchors ? 0 : inputs.n;
          gradient.narrow(0, row_offset + row_begin, rows)
              .addmm_(q, column_source.narrow(0, column_begin, cols));
          gradient.narrow(0, column_offset + column_begin, cols)
              .addmm_(q.t(), row_source.narrow(0, row_begin, rows));
        },
        [](int64_t, int64_t) {});
    at::Tensor total;
    for (const auto& gradient : thread_gradients) {
      if (!gradient.defined()) continue;
      total = total.defined() ? total.add_(gradient) : gradient;
    }
    if (!total.defined()) total = at::zeros({inputs.n + inputs.m, dim}, inputs.anchors.options());
    // Outputs must not share storage (the schema promises two fresh tensors).
    grad_anchors = total.narrow(0, 0, inputs.n);
    grad_candidates = total.narrow(0, inputs.n, inputs.m).clone();
    // The target term -scale * <a_i, p_i> of the loss.
    const auto target_weight = (weights_tensor * -tile_scale).unsqueeze(1);
    grad_anchors.add_(inputs.candidates.narrow(0, 0, inputs.n) * target_weight);
    grad_candidates.narrow(0, 0, inputs.n).add_(inputs.anchors * target_weight);
  });
  return {grad_anchors, grad_candidates};
}

}  // namespace

TORCH_LIBRARY_IMPL(embedplug, CPU, m) {
  m.impl("masked_infonce", &masked_infonce_cpu);
  m.impl("_masked_infonce_backward", &masked_infonce_backward_cpu);
}

}  // namespace cpu
}  // namespace embedplug
