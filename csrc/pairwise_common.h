// Host-side pieces of the batch-mining family that both backends share: distance parsing, the
// GEMM operand (unit rows / squared norms), the cosine chain rule of the pair-weight gradient,
// the input checks and the label grouping. Plain ATen, device-agnostic: the CPU kernels
// (csrc/cpu) and the CUDA kernels (csrc/cuda) call the same functions. The per-element rules
// live in pairwise_rules.h.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "pairwise_rules.h"

namespace embedplug {

inline DistanceKind parse_distance(std::string_view name) {
  if (name == "euclidean") return DistanceKind::kEuclidean;
  if (name == "squared_euclidean") return DistanceKind::kSquaredEuclidean;
  if (name == "cosine") return DistanceKind::kCosine;
  TORCH_CHECK(false, "embedplug: unknown distance '", std::string(name),
              "'; expected one of 'euclidean', 'squared_euclidean', 'cosine'");
}

// Rows that enter the GEMM plus the per-row squared norms the euclidean epilogue needs.
// Cosine distance is computed on rows normalised exactly like torch.nn.functional.normalize
// (x / max(||x||, 1e-12)), which is what sentence-transformers' cos_sim does.
struct GemmOperand {
  at::Tensor rows;           // [N, D] contiguous
  at::Tensor squared_norms;  // [N], only filled for the euclidean kinds
};

inline GemmOperand prepare_operand(const at::Tensor& embeddings, DistanceKind kind) {
  GemmOperand operand;
  if (kind == DistanceKind::kCosine) {
    auto norms = embeddings.norm(2, /*dim=*/1, /*keepdim=*/true).clamp_min(kNormalizeEps);
    operand.rows = (embeddings / norms).contiguous();
  } else {
    operand.rows = embeddings.contiguous();
    operand.squared_norms = operand.rows.mul(operand.rows).sum(1).contiguous();
  }
  return operand;
}

// Operand for the row-block kernels. sentence-transformers takes squared norms from the diagonal
// of its Gram matrix, and a BLAS dot product rounds differently from ATen's sum of squares; losses
// that pick elements by comparing distances (semi-hard) would then flip near-ties against ST. The
// diagonal of block x block Gram products reproduces ST's norms: BLAS computes an entry the same
// way in a block as in the full product whenever it keeps its accumulation order over D.
inline GemmOperand prepare_row_block_operand(const at::Tensor& embeddings, DistanceKind kind, int64_t block) {
  GemmOperand operand = prepare_operand(embeddings, kind);
  if (kind == DistanceKind::kCosine) return operand;
  const int64_t n = operand.rows.size(0);
  auto squared_norms = at::empty({n}, operand.rows.options());
  for (int64_t begin = 0; begin < n; begin += block) {
    const int64_t rows = std::min(block, n - begin);
    const auto rows_block = operand.rows.narrow(0, begin, rows);
    squared_norms.narrow(0, begin, rows).copy_(at::mm(rows_block, rows_block.t()).diagonal());
  }
  operand.squared_norms = squared_norms;
  return operand;
}

// The pair-weight gradient's last step (see pair_weight_gradient): grad = self_coefficient * base
// - pair_total, then the cosine chain rule through normalize.
inline at::Tensor finish_pair_gradient(const at::Tensor& x, const at::Tensor& base, DistanceKind kind,
                                       const at::Tensor& self_total, const at::Tensor& pair_total) {
  if (kind != DistanceKind::kCosine) return self_total.unsqueeze(1) * base - pair_total;
  const auto norms = x.norm(2, 1);
  // Below eps, normalize divides by the constant eps: no projection term.
  const auto projected = (norms >= kNormalizeEps).to(x.scalar_type());
  return (projected * self_total).unsqueeze(1).mul(base).sub(pair_total).div(norms.clamp_min(kNormalizeEps).unsqueeze(1));
}

// Whether every entry of a 1-D incoming gradient is the same (finite or not, NaN excluded): the
// per-anchor losses are always reduced by a plain sum scaled once, which gives exactly that.
inline bool uniform_gradient(const at::Tensor& grad) {
  return grad.numel() > 0 && grad.eq(grad[0]).all().item<bool>();
}

// Input checks shared by the mining and per-anchor loss kernels; `backend` names the kernel
// ("CPU", "CUDA") in the messages.
inline void check_embeddings_and_labels(const at::Tensor& embeddings, const at::Tensor& labels, const char* backend) {
  TORCH_CHECK(embeddings.dim() == 2, "embedplug: embeddings must be 2-D [N, D], got ", embeddings.dim(), "-D");
  TORCH_CHECK(embeddings.scalar_type() == at::kFloat || embeddings.scalar_type() == at::kDouble, "embedplug: the ",
              backend, " kernel takes float32 or float64 embeddings, got ", embeddings.scalar_type());
  TORCH_CHECK(embeddings.size(0) > 0, "embedplug: empty batch (N = 0)");
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == embeddings.size(0),
              "embedplug: labels must be 1-D with one label per embedding (", embeddings.size(0), "), got shape ",
              labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong, "embedplug: labels must be int64, got ", labels.scalar_type());
  TORCH_CHECK(labels.device() == embeddings.device(), "embedplug: labels and embeddings must be on the same device");
}

// Samples grouped by label, so an anchor finds its positives without scanning the row:
// members[class_begin[a] .. class_end[a]) are the samples sharing a's label, in index order.
// Built on the host from host labels (the CUDA kernels copy the result to the device).
struct ClassMembers {
  std::vector<int64_t> members, class_begin, class_end;

  ClassMembers(const int64_t* labels, int64_t n) : members(n), class_begin(n), class_end(n) {
    for (int64_t i = 0; i < n; ++i) members[i] = i;
    std::stable_sort(members.begin(), members.end(), [&](int64_t x, int64_t y) { return labels[x] < labels[y]; });
    for (int64_t begin = 0; begin < n;) {
      int64_t end = begin + 1;
      while (end < n && labels[members[end]] == labels[members[begin]]) ++end;
      for (int64_t i = begin; i < end; ++i) {
        class_begin[members[i]] = begin;
        class_end[members[i]] = end;
      }
      begin = end;
    }
  }

  int64_t class_size(int64_t sample) const { return class_end[sample] - class_begin[sample]; }
  // The smallest index with this sample's label (the first same-label column of its row).
  int64_t first_member(int64_t sample) const { return members[class_begin[sample]]; }
  // Appends the sample's positives (same label, not itself) in index order.
  void positives_of(int64_t sample, std::vector<int64_t>& out) const {
    out.clear();
    for (int64_t i = class_begin[sample]; i < class_end[sample]; ++i) {
      if (members[i] != sample) out.push_back(members[i]);
    }
  }
};

}  // namespace embedplug
