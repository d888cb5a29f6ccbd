// Host-side pieces of the pair-rule op that both backends share: the checks of the encoded rule
// (so that a raw torch.ops call with a malformed rule fails with a message, never a wrong number),
// the GEMM operands the rule's measure reads, the chain rule back to the embeddings, and the
// uniform-gradient shortcut of the backward. Plain ATen, device-agnostic.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <optional>

#include "op_input_checks.h"
#include "pair_rule_rules.h"
#include "pairwise_common.h"

namespace embedplug {
namespace pair_rule {

inline void check_code(const char* op, const char* part, int64_t value, int64_t low, int64_t high) {
  TORCH_CHECK_VALUE(low <= value && value <= high, "embedplug::", op, ": encoded rule: ", part, " code ", value,
                    " is out of range [", low, ", ", high, "]; encode rules with embedplug.pair_rules.encode");
}

// Lengths, codes and reals of an encoded rule, and the combinations one Gram matrix serves.
inline void check_encoded_rule(const char* op, c10::ArrayRef<double> params, c10::ArrayRef<int64_t> codes) {
  TORCH_CHECK_VALUE(static_cast<int64_t>(codes.size()) == kCodes && static_cast<int64_t>(params.size()) == kParams,
                    "embedplug::", op, ": an encoded rule has ", kCodes, " codes and ", kParams, " params, got ",
                    codes.size(), " and ", params.size(), "; encode rules with embedplug.pair_rules.encode");
  const char* sides[2] = {"positives", "negatives"};
  for (int s = 0; s < 2; ++s) {
    const int64_t* c = codes.data() + s * kSideCodes;
    check_code(op, sides[s], c[0], 0, 3);
    for (int k = 1; k <= 4; ++k) check_code(op, sides[s], c[k], 0, 1);
    check_code(op, sides[s], c[5], 0, s == 0 ? 2 : 1);
    check_code(op, sides[s], c[6], 0, 4);
    for (int k = 0; k < kSideParams; ++k) {
      TORCH_CHECK_VALUE(std::isfinite(params[s * kSideParams + k]), "embedplug::", op, ": encoded rule: ", sides[s],
                        " param ", k, " must be finite, got ", params[s * kSideParams + k]);
    }
    TORCH_CHECK_VALUE(params[s * kSideParams + 4] > 0, "embedplug::", op, ": encoded rule: ", sides[s],
                      " temperature must be > 0");
  }
  const int64_t* r = codes.data() + 2 * kSideCodes;
  TORCH_CHECK_VALUE(r[0] == kEncodingVersion, "embedplug::", op, ": encoded rule version ", r[0], ", this build reads ",
                    kEncodingVersion);
  check_code(op, "versus reference", r[1], 0, 2);
  check_code(op, "versus rows", r[2], 0, 1);
  check_code(op, "versus outer", r[3], 0, 2);
  check_code(op, "combine", r[4], -1, 3);
  check_code(op, "combine zero_unless_both_sides", r[5], 0, 1);
  check_code(op, "reducer over", r[6], 0, 2);
  const bool distance[2] = {codes[0] >= 2, codes[kSideCodes] >= 2};
  TORCH_CHECK_VALUE(distance[0] == distance[1] && codes[1] == codes[kSideCodes + 1], "embedplug::", op,
                    ": encoded rule: both sides must read one Gram matrix (both similarities or both distances, "
                    "one normalize)");
}

// The rows the rule measures (normalised as torch.nn.functional.normalize does, or as given) and
// the two GEMM operands of its measure: the rows themselves for similarities; for distances
// torch.cdist's augmented rows [-2u, |u|^2, 1] and [u, 1, |u|^2], whose product is its squared
// distance before the clamp.
struct RuleOperands {
  at::Tensor x, unit, left, right;
  bool normalize, distance;
};

inline RuleOperands rule_operands(const at::Tensor& embeddings, bool normalize, bool distance) {
  RuleOperands out;
  out.x = embeddings.detach().contiguous();
  out.normalize = normalize;
  out.distance = distance;
  out.unit = normalize ? prepare_operand(out.x, DistanceKind::kCosine).rows : out.x;
  if (!distance) {
    out.left = out.right = out.unit;
    return out;
  }
  const auto squared = out.unit.pow(2).sum(-1, /*keepdim=*/true);
  const auto ones = at::ones_like(squared);
  out.left = at::cat({out.unit.mul(-2), squared, ones}, -1).contiguous();
  out.right = at::cat({out.unit, ones, squared}, -1).contiguous();
  return out;
}

// d/dx from G = sum_j M_aj u_j (and, for distances, self_a = sum_j M_aj): the |u_a|^2 terms of the
// augmented product give -self_a u_a; then normalize's chain rule, (G - (u.G) u) / max(|x|, eps) with
// no projection below eps (finish_pair_gradient's cosine step). In place on pair_total, the caller's
// accumulator: at N = 65,536 each N x D temporary is 96 MiB of the 1 GiB budget.
inline at::Tensor gradient_of_rows(const RuleOperands& operands, at::Tensor pair_total, const at::Tensor& self_total) {
  at::Tensor g = pair_total;
  if (operands.distance) g.addcmul_(operands.unit, self_total.unsqueeze(1), -1);
  if (!operands.normalize) return g;
  const auto norms = operands.x.norm(2, 1);
  const auto projected = (norms >= kNormalizeEps).to(g.scalar_type());
  // u_a . G_a per row without an N x D product temporary.
  const auto projection = at::bmm(operands.unit.unsqueeze(1), g.unsqueeze(2)).reshape({-1});
  g.addcmul_(operands.unit, (projected * projection).unsqueeze(1), -1);
  g.div_(norms.clamp_min(kNormalizeEps).unsqueeze(1));
  return g;
}

// The backward's shortcut: when every stream's incoming gradient is one number g_s (what the
// reducers give), the gradient is sum_s g_s unit_grad[s]; a stream with g_s = 0 adds nothing, even
// where unit_grad is not finite.
inline std::optional<at::Tensor> scaled_unit_gradient(const at::Tensor& grad, const at::Tensor& unit_grad) {
  if (unit_grad.numel() == 0 || unit_grad.dim() != 3 || unit_grad.size(0) != grad.size(0)) return std::nullopt;
  at::Tensor total;
  for (int64_t s = 0; s < grad.size(0); ++s) {
    const auto stream = grad[s];
    if (!stream.eq(stream[0]).all().item<bool>()) return std::nullopt;
    const double g = stream[0].item<double>();
    if (g == 0) continue;
    const auto part = unit_grad[s] * g;
    total = total.defined() ? total + part : part;
  }
  return total.defined() ? total : at::zeros_like(unit_grad[0]);
}

}  // namespace pair_rule
}  // namespace embedplug
