// Host-side pieces shared by the CPU and CUDA kernels of the label-aware contrastive losses: the
// ops' options and their checks, and the test that lets the backward reuse the forward's gradient.
// The math itself lives in labelled_contrastive_rules.h.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>

#include "labelled_contrastive_rules.h"

namespace embedplug {
namespace labelled_contrastive {

using rules::ContrastiveLoss;
using rules::ContrastiveParams;

// Double-precision options as the schema gives them; cast per dtype in the kernel.
struct ContrastiveOptions {
  ContrastiveLoss loss;
  double temperature = 1, alpha = 1, beta = 1, base = 0, m = 0, gamma = 1;
  std::optional<double> mining_epsilon;

  template <typename scalar_t>
  ContrastiveParams<scalar_t> params() const {
    ContrastiveParams<scalar_t> p;
    p.loss = loss;
    p.temperature = static_cast<scalar_t>(temperature);
    p.alpha = static_cast<scalar_t>(alpha);
    p.beta = static_cast<scalar_t>(beta);
    p.base = static_cast<scalar_t>(base);
    p.m = static_cast<scalar_t>(m);
    p.gamma = static_cast<scalar_t>(gamma);
    p.mine = mining_epsilon.has_value();
    p.epsilon = static_cast<scalar_t>(mining_epsilon.value_or(0.0));
    return p;
  }
};

inline void check_positive(double value, const char* name) {
  TORCH_CHECK(std::isfinite(value) && value > 0, "embedplug: ", name, " must be a positive finite number, got ", value);
}
inline void check_finite(double value, const char* name) {
  TORCH_CHECK(std::isfinite(value), "embedplug: ", name, " must be a finite number, got ", value);
}

// Per sample, how many samples share its label (itself included), on the labels' device.
inline at::Tensor class_sizes(const at::Tensor& labels) {
  const auto flat = labels.reshape({-1});
  const auto [values, inverse, counts] = at::_unique2(flat, /*sorted=*/false, /*return_inverse=*/true, /*return_counts=*/true);
  return counts.index_select(0, inverse.reshape({-1})).contiguous();
}

// The anchors the reducer counts (rules::counted_by_reducer), from the class sizes: the decision is
// structural, so it is the same whatever the losses rounded to.
inline at::Tensor anchors_counted_by_reducer(const at::Tensor& labels, const at::Tensor& losses,
                                             const ContrastiveOptions& options) {
  if (options.loss == ContrastiveLoss::kMultiSimilarity) return at::ones_like(losses, losses.options().dtype(at::kBool));
  const auto class_size = class_sizes(labels);
  const auto positives = class_size - 1;
  const auto negatives = class_size.size(0) - class_size;
  const auto structural = options.loss == ContrastiveLoss::kSupCon ? positives.ge(1).logical_and_((positives + negatives).ge(2))
                                                                   : positives.ge(1).logical_and_(negatives.ge(1));
  return structural.logical_or_(losses.isnan());
}

// Whether grad_losses is g on the anchors the reducer counts and 0 elsewhere (what the reduction
// always gives): then the gradient is g times the forward's unit gradient.
inline std::optional<at::Tensor> scaled_unit_gradient(const at::Tensor& grad_losses, const at::Tensor& labels,
                                                      const at::Tensor& losses, const at::Tensor& unit_grad,
                                                      const ContrastiveOptions& options) {
  if (unit_grad.numel() == 0) return std::nullopt;
  TORCH_CHECK(unit_grad.dim() == 2 && unit_grad.size(0) == losses.size(0), "embedplug: unit_grad must be empty or [N, D]");
  const auto counted = anchors_counted_by_reducer(labels, losses, options);
  const auto grad = grad_losses.to(unit_grad.scalar_type());
  if (!grad.masked_select(counted.logical_not()).eq(0).all().item<bool>()) return std::nullopt;
  const auto on_counted = grad.masked_select(counted);
  if (on_counted.numel() == 0) return at::zeros_like(unit_grad);
  if (!on_counted.eq(on_counted[0]).all().item<bool>()) return std::nullopt;
  const auto g = on_counted[0];
  if (g.eq(0).item<bool>()) return at::zeros_like(unit_grad);
  return unit_grad * g;
}

inline ContrastiveOptions supcon_options(double temperature) {
  check_positive(temperature, "temperature");
  ContrastiveOptions options;
  options.loss = ContrastiveLoss::kSupCon;
  options.temperature = temperature;
  return options;
}

inline ContrastiveOptions multi_similarity_options(double alpha, double beta, double base, std::optional<double> mining_epsilon) {
  check_positive(alpha, "alpha");
  check_positive(beta, "beta");
  check_finite(base, "base");
  if (mining_epsilon) check_finite(*mining_epsilon, "mining_epsilon");
  ContrastiveOptions options;
  options.loss = ContrastiveLoss::kMultiSimilarity;
  options.alpha = alpha;
  options.beta = beta;
  options.base = base;
  options.mining_epsilon = mining_epsilon;
  return options;
}

inline ContrastiveOptions circle_options(double m, double gamma) {
  check_finite(m, "m");
  check_positive(gamma, "gamma");
  ContrastiveOptions options;
  options.loss = ContrastiveLoss::kCircle;
  options.m = m;
  options.gamma = gamma;
  return options;
}

}  // namespace labelled_contrastive
}  // namespace embedplug
