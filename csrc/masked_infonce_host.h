// Host-side pieces of the masked in-batch softmax (InfoNCE) ops that the CPU and the CUDA kernels
// share: option parsing, input checks (one message per cause, for both backends) and the detached,
// contiguous inputs. No kernel code; the rules live in infonce_rules.h.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "infonce_rules.h"

namespace embedplug {
namespace infonce_host {

using embedplug::infonce::MarginStrategy;
using embedplug::infonce::SoftmaxBlock;

inline MarginStrategy parse_margin_strategy(c10::string_view name) {
  const std::string_view view(name.data(), name.size());
  if (view == "none") return MarginStrategy::kNone;
  if (view == "absolute") return MarginStrategy::kAbsolute;
  if (view == "relative") return MarginStrategy::kRelative;
  TORCH_CHECK(false, "embedplug: unknown margin_strategy '", std::string(view),
              "'; expected one of 'none', 'absolute', 'relative'");
}

struct InfoNCEOptions {
  double scale;
  MarginStrategy strategy;
  double margin;
  bool anchor_anchor;
  bool positive_anchor;
  int64_t positive_candidate_columns;
  bool exclude_self;
};

inline std::vector<SoftmaxBlock> softmax_blocks(const InfoNCEOptions& options, int64_t n, int64_t m) {
  const embedplug::infonce::SoftmaxBlockList list =
      embedplug::infonce::softmax_blocks(options.anchor_anchor, options.positive_anchor,
                                         options.positive_candidate_columns, options.exclude_self, n, m);
  return std::vector<SoftmaxBlock>(list.blocks, list.blocks + list.count);
}

// The inputs as contiguous detached matrices: the tile GEMMs run on worker threads, which do not
// inherit autograd guards, and the op carries its own backward.
struct InfoNCEInputs {
  at::Tensor anchors, candidates;              // student [N, D], [M, D]
  at::Tensor guide_anchors, guide_candidates;  // [N, Dg], [M, Dg]; the student's when self-guided
  bool guided = false;
  bool self_guided = false;
  int64_t n = 0, m = 0;
};

inline void check_inputs(const at::Tensor& anchors, const at::Tensor& candidates,
                  const std::optional<at::Tensor>& guide_anchors,
                  const std::optional<at::Tensor>& guide_candidates, const InfoNCEOptions& options) {
  TORCH_CHECK(anchors.dim() == 2 && candidates.dim() == 2,
              "embedplug: anchors and candidates must be 2-D [N, D] and [M, D], got ", anchors.sizes(),
              " and ", candidates.sizes());
  TORCH_CHECK(anchors.scalar_type() == at::kFloat || anchors.scalar_type() == at::kDouble,
              "embedplug: the kernels take float32 or float64 embeddings, got ", anchors.scalar_type());
  TORCH_CHECK(candidates.scalar_type() == anchors.scalar_type(),
              "embedplug: anchors and candidates must have the same dtype");
  const int64_t n = anchors.size(0);
  const int64_t m = candidates.size(0);
  TORCH_CHECK(n > 0, "embedplug: empty batch (N = 0)");
  TORCH_CHECK(anchors.size(1) == candidates.size(1), "embedplug: anchors and candidates must have the same width D");
  TORCH_CHECK(m >= n && m % n == 0,
              "embedplug: candidates must be the N positives followed by whole columns of N negatives (M a "
              "multiple of N = ", n, "), got M = ", m);
  TORCH_CHECK(guide_anchors.has_value() == guide_candidates.has_value(),
              "embedplug: give both guide_anchors and guide_candidates, or neither");
  if (guide_anchors.has_value()) {
    TORCH_CHECK(options.strategy != MarginStrategy::kNone,
                "embedplug: guide embeddings given but margin_strategy is 'none'");
    TORCH_CHECK(guide_anchors->dim() == 2 && guide_candidates->dim() == 2 && guide_anchors->size(0) == n &&
                    guide_candidates->size(0) == m && guide_anchors->size(1) == guide_candidates->size(1),
                "embedplug: guide embeddings must be [N, Dg] and [M, Dg] like the student's, got ",
                guide_anchors->sizes(), " and ", guide_candidates->sizes());
    TORCH_CHECK(guide_anchors->scalar_type() == anchors.scalar_type() &&
                    guide_candidates->scalar_type() == anchors.scalar_type(),
                "embedplug: guide embeddings must have the student's dtype");
  }
  TORCH_CHECK(options.positive_candidate_columns >= 0 && options.positive_candidate_columns <= m,
              "embedplug: positive_candidate_columns must be in [0, M = ", m, "], got ",
              options.positive_candidate_columns);
  TORCH_CHECK(std::isfinite(options.scale) && options.scale > 0, "embedplug: scale must be a positive number");
  TORCH_CHECK_VALUE(std::isfinite(options.margin), "embedplug: margin must be a finite number, got ", options.margin);
}

inline InfoNCEInputs prepare_inputs(const at::Tensor& anchors, const at::Tensor& candidates,
                             const std::optional<at::Tensor>& guide_anchors,
                             const std::optional<at::Tensor>& guide_candidates, const InfoNCEOptions& options) {
  InfoNCEInputs inputs;
  inputs.anchors = anchors.detach().contiguous();
  inputs.candidates = candidates.detach().contiguous();
  inputs.n = anchors.size(0);
  inputs.m = candidates.size(0);
  inputs.guided = options.strategy != MarginStrategy::kNone;
  inputs.self_guided = inputs.guided && !guide_anchors.has_value();
  if (inputs.self_guided) {
    inputs.guide_anchors = inputs.anchors;
    inputs.guide_candidates = inputs.candidates;
  } else if (inputs.guided) {
    inputs.guide_anchors = guide_anchors->detach().contiguous();
    inputs.guide_candidates = guide_candidates->detach().contiguous();
  }
  return inputs;
}

// The largest entry of a vector of guide norms, ignoring NaN (-inf when every entry is NaN). One
// NaN guide row must not widen every other row's threshold band; both backends call this, where
// the CPU once took std::max_element (order-dependent with NaN) and CUDA at::max (NaN wins).
inline at::Tensor nan_ignoring_maximum(const at::Tensor& values) {
  return values.masked_fill(values.isnan(), -std::numeric_limits<double>::infinity()).max();
}

}  // namespace infonce_host
}  // namespace embedplug
