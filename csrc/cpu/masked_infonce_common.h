// Shared by the CPU masked in-batch softmax (InfoNCE) kernels: the guide's thresholds and the epilogue that turns a similarity
// tile into masked logits. The rules themselves (column groups, the GIST predicate, the online
// log-sum-exp) live in infonce_rules.h, shared with the CUDA kernels; semantics are documented there
// and in masked_infonce_kernel.cpp.
#pragma once

#include <torch/library.h>

#include <optional>
#include <string>

#include "cpu/pairwise_tiles.h"
#include "infonce_rules.h"
#include "masked_infonce_host.h"

namespace embedplug {
namespace cpu {
namespace infonce {

// 256 x 256 fp32 logit tiles (256 KiB) stay in L2 through the epilogue.
constexpr int64_t kTileSize = 256;

using embedplug::infonce::exact_dot;
using embedplug::infonce::MarginStrategy;
using embedplug::infonce::RunningLogSumExp;
using embedplug::infonce::SoftmaxBlock;

using embedplug::infonce_host::check_inputs;
using embedplug::infonce_host::InfoNCEInputs;
using embedplug::infonce_host::InfoNCEOptions;
using embedplug::infonce_host::parse_margin_strategy;
using embedplug::infonce_host::prepare_inputs;
using embedplug::infonce_host::softmax_blocks;

// Per-row thresholds and per-row guide norms (which bound the GEMM rounding error).
template <typename scalar_t>
struct GuideState {
  std::vector<scalar_t> threshold;         // [N]
  std::vector<scalar_t> anchor_norm;       // [N]
  std::vector<scalar_t> candidate_norm;    // [M]
  scalar_t max_anchor_norm = 0, max_candidate_norm = 0;
  scalar_t relative_tolerance = 0;
  int64_t dim = 0;
  const scalar_t* anchors = nullptr;
  const scalar_t* candidates = nullptr;
};

template <typename scalar_t>
std::vector<scalar_t> row_norms(const at::Tensor& rows) {
  const int64_t count = rows.size(0), dim = rows.size(1);
  const scalar_t* data = rows.data_ptr<scalar_t>();
  std::vector<scalar_t> norms(count);
  at::parallel_for(0, count, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) norms[r] = std::sqrt(exact_dot(data + r * dim, data + r * dim, dim));
  });
  return norms;
}

template <typename scalar_t>
GuideState<scalar_t> make_guide_state(const InfoNCEInputs& inputs, const InfoNCEOptions& options) {
  GuideState<scalar_t> guide;
  if (!inputs.guided) return guide;
  guide.dim = inputs.guide_anchors.size(1);
  guide.anchors = inputs.guide_anchors.data_ptr<scalar_t>();
  guide.candidates = inputs.guide_candidates.data_ptr<scalar_t>();
  guide.anchor_norm = row_norms<scalar_t>(inputs.guide_anchors);
  guide.candidate_norm = row_norms<scalar_t>(inputs.guide_candidates);
  const auto dtype = inputs.guide_anchors.scalar_type();
  auto as_tensor = [&](std::vector<scalar_t>& values) {
    return at::from_blob(values.data(), {static_cast<int64_t>(values.size())}, at::TensorOptions().dtype(dtype));
  };
  guide.max_anchor_norm = infonce_host::nan_ignoring_maximum(as_tensor(guide.anchor_norm)).template item<scalar_t>();
  guide.max_candidate_norm = infonce_host::nan_ignoring_maximum(as_tensor(guide.candidate_norm)).template item<scalar_t>();
  guide.relative_tolerance = embedplug::infonce::gemm_relative_tolerance<scalar_t>(guide.dim);
  guide.threshold.resize(inputs.n);
  const scalar_t margin = static_cast<scalar_t>(options.margin);
  for (int64_t i = 0; i < inputs.n; ++i) {
    const scalar_t target = exact_dot(guide.anchors + i * guide.dim, guide.candidates + i * guide.dim, guide.dim);
    guide.threshold[i] = embedplug::infonce::guide_threshold(options.strategy, target, margin);
  }
  return guide;
}

// Everything the epilogue needs to decide which entries of a block stay in the softmax.
template <typename scalar_t>
struct EntryFilter {
  const SoftmaxBlock& block;
  const GuideState<scalar_t>& guide;
  bool guided;
  int64_t n;

  // The guide's verdict on entry (row i, column j) from the exact dot product, for entries whose
  // GEMM value lies within the rounding band of the threshold.
  bool guide_keeps_exact(int64_t i, int64_t j) const {
    const scalar_t* row = (block.rows_are_positives ? guide.candidates : guide.anchors) + i * guide.dim;
    const scalar_t* column = (block.columns_are_anchors ? guide.anchors : guide.candidates) + j * guide.dim;
    return embedplug::infonce::guide_keeps_exact(exact_dot(row, column, guide.dim), guide.threshold[i]);
  }

  // Band around row i's threshold that covers every column of the block (largest column norm).
  scalar_t row_band(int64_t i) const {
    const scalar_t row_norm = block.rows_are_positives ? guide.candidate_norm[i] : guide.anchor_norm[i];
    const scalar_t column_norm = block.columns_are_anchors ? guide.max_anchor_norm : guide.max_candidate_norm;
    return embedplug::infonce::threshold_band(guide.relative_tolerance, row_norm, column_norm);
  }
};

// Writes the tile's logits (scale * similarity, -inf where the entry is dropped) over the
// similarity tile (rows tile_stride apart; the guide tile's rows guide_stride apart). The hot loop only compares the guide value with per-row bounds; the rare entries
// inside the rounding band, the protected target pair and the self columns are fixed up per row.
// Self-guided, the guide tile is the similarity tile: each value is read before it is overwritten.

template <typename scalar_t>
inline void write_masked_logits(const EntryFilter<scalar_t>& filter, scalar_t scale, int64_t row_begin,
                                int64_t rows, int64_t column_begin, int64_t cols, scalar_t* tile,
                                const scalar_t* guide_tile, int64_t tile_stride, int64_t guide_stride) {
  using embedplug::infonce::GuideVerdict;
  const scalar_t dropped = embedplug::infonce::dropped_logit<scalar_t>();
  const SoftmaxBlock& block = filter.block;
  const int64_t column_end = column_begin + cols;
  std::vector<int64_t> near_threshold;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = row_begin + r;
    scalar_t* logits = tile + r * tile_stride;
    const bool target_in_tile =
        i >= column_begin && i < column_end && embedplug::infonce::is_target_pair(block, i, i);
    const scalar_t target_similarity = target_in_tile ? logits[i - column_begin] : scalar_t(0);
    if (!filter.guided) {
      for (int64_t c = 0; c < cols; ++c) logits[c] *= scale;
    } else {
      const scalar_t* guide_row = guide_tile + r * guide_stride;
      const scalar_t threshold = filter.guide.threshold[i];
      const scalar_t band = filter.row_band(i);
      const scalar_t upper = threshold + band, lower = threshold - band;
      // Which entries the guide drops is data-dependent (about half of them at margin 0), so the
      // hot loop is a branch-free select; the rare entries inside the band are decided afterwards.
      // Entries inside the band keep their raw similarity until masked_logit, the per-entry rule
      // the CUDA epilogue runs, decides them (self-guided, that raw value is also the guide value).
      near_threshold.clear();
      for (int64_t c = 0; c < cols; ++c) {
        const scalar_t guide_value = guide_row[c];
        const GuideVerdict verdict = embedplug::infonce::guide_verdict(guide_value, lower, upper);
        if (verdict == GuideVerdict::kNearThreshold) near_threshold.push_back(c);
        const scalar_t kept = verdict == GuideVerdict::kNearThreshold ? logits[c] : scale * logits[c];
        logits[c] = verdict == GuideVerdict::kDrop ? dropped : kept;
      }
      for (const int64_t c : near_threshold) {
        const int64_t j = column_begin + c;
        logits[c] = embedplug::infonce::masked_logit(block, i, j, filter.n, scale, logits[c], /*guided=*/true,
                                                     guide_row[c], lower, upper,
                                                     [&] { return filter.guide_keeps_exact(i, j); });
      }
      if (target_in_tile) logits[i - column_begin] = scale * target_similarity;
    }
    if (block.excludes_self) {
      // Own columns (is_self_column): j == i among anchors, j == i (mod N) among candidates.
      const int64_t stride = embedplug::infonce::self_column_stride(block, filter.n);
      const int64_t first = i + ((column_begin - i + stride - 1) / stride) * stride;
      for (int64_t j = std::max(first, i); j < column_end; j += stride) {
        if (j >= column_begin && embedplug::infonce::is_self_column(block, i, j, filter.n)) {
          logits[j - column_begin] = dropped;
        }
      }
    }
  }
}

// exp over a tile of shifted logits (all <= 0 up to rounding, -inf where dropped), in place.
// ATen's vectorised exp leaves its fast path for inputs whose result underflows (-inf included,
// and every logit far below the row maximum at GIST's scale of 100), which made it ~50x slower;
// those entries are exactly 0 instead, which they are to working precision next to a row sum >= 1.
template <typename scalar_t>
at::Tensor& exp_without_underflow(at::Tensor& tile) {
  const double cutoff = embedplug::infonce::exp_underflow_cutoff<scalar_t>();
  const auto underflows = tile < cutoff;
  return tile.clamp_min_(cutoff).exp_().masked_fill_(underflows, 0);
}

// What every masked InfoNCE op starts from: its checked options, its inputs as contiguous detached
// matrices and the softmax blocks a row runs over.
struct InfoNCEProblem {
  InfoNCEOptions options;
  InfoNCEInputs inputs;
  std::vector<SoftmaxBlock> blocks;
};

inline InfoNCEProblem make_problem(const at::Tensor& anchors, const at::Tensor& candidates,
                                   const std::optional<at::Tensor>& guide_anchors,
                                   const std::optional<at::Tensor>& guide_candidates, double scale,
                                   c10::string_view margin_strategy, double margin, bool anchor_anchor,
                                   bool positive_anchor, int64_t positive_candidate_columns, bool exclude_self) {
  InfoNCEProblem problem;
  problem.options = {scale, parse_margin_strategy(margin_strategy), margin, anchor_anchor, positive_anchor,
                     positive_candidate_columns, exclude_self};
  check_inputs(anchors, candidates, guide_anchors, guide_candidates, problem.options);
  TORCH_CHECK(anchors.device().is_cpu(), "embedplug: the CPU masked InfoNCE kernels got a non-CPU tensor");
  problem.inputs = prepare_inputs(anchors, candidates, guide_anchors, guide_candidates, problem.options);
  problem.blocks = softmax_blocks(problem.options, problem.inputs.n, problem.inputs.m);
  return problem;
}


}  // namespace infonce
}  // namespace cpu
}  // namespace embedplug
