// Every embedplug op schema is declared here, once. Backend files (csrc/cpu, csrc/cuda) only
// implement them with TORCH_LIBRARY_IMPL; fake kernels and autograd are registered from Python
// (embedplug/ops/), which is what makes the ops visible to torch.compile and opcheck.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <torch/version.h>

#include <string>

TORCH_LIBRARY(embedplug, m) {
  // Hardest off-diagonal similarity per anchor (MegaBatchMarginLoss's negative mining), fused with the
  // similarity GEMM: anchors [N, D], candidates [M, D] float32/float64 (already normalised for cosine).
  // Returns (values [N], indices [N] int64): max over j != i of <anchors[i], candidates[j]> and its j,
  // in torch.max's order (NaN wins, first maximum on ties); -inf and -1 when anchor i has no j != i.
  // Not differentiable: the loss recomputes the picked pairs' similarities in torch (O(N D)).
  m.def("hardest_off_diagonal_similarity(Tensor anchors, Tensor candidates) -> (Tensor, Tensor)");
  // Dataset-scale hard-negative top-k (mining), fused with the similarity GEMM; semantics of
  // embedplug/reference/hard_negative_topk.py (sentence-transformers' mine_hard_negatives filters).
  //   queries [Q, D], corpus [C, D] float32/float64; positives [Q, P] and excluded [Q, E] int64 corpus
  //   indices (-1 padding); positive_scores [Q, P] the positives' scores for the margins; the filters
  //   absolute_margin, relative_margin, max_score, min_score (None: off); range_max None is open mode
  //   (the survivors ranked range_min .. range_min + k - 1), else window mode over the
  //   range_max + reserved_slots best raw rows (reserved_slots None: P + E).
  // Returns (scores [Q, k], indices [Q, k] int64, removed [6] int64): best first, ties by the lower
  // index, (-inf, -1) padding; removed counts the candidates each rule removed first. Not differentiable.
  m.def(
      "hard_negative_topk(Tensor queries, Tensor corpus, int k, Tensor positives, Tensor positive_scores, "
      "Tensor excluded, bool exclude_positives, float? absolute_margin, float? relative_margin, float? max_score, "
      "float? min_score, int range_min, int? range_max, int? reserved_slots) -> (Tensor, Tensor, Tensor)");
  // Batch-hard mining fused with pairwise distances (sentence-transformers semantics).
  //   embeddings [N, D] float32/float64, labels [N] int64, distance in
  //   {"euclidean", "squared_euclidean", "cosine"}.
  // Returns (distances [N, 3], indices [N, 3] int64): per anchor the hardest positive,
  // the hardest-negative candidate and the row-maximum offset that sentence-transformers adds
  // to the candidate when it is not a true negative; index -1 marks an unused slot.
  m.def("batch_hard_mining(Tensor embeddings, Tensor labels, str distance) -> (Tensor, Tensor)");
  // Scatters grad_distances [N, 3] onto the (at most 3N) pairs that batch_hard_mining picked.
  m.def(
      "_batch_hard_mining_backward(Tensor grad_distances, Tensor embeddings, Tensor distances, "
      "Tensor indices, str distance) -> Tensor");
  // Batch-all triplet loss, per anchor, without the (positive pairs) x N tensor.
  //   Returns (loss_sums [N] float, active_counts [N] int64, unit_grad): per anchor the sum over
  //   its triplets of max((d_ap - d_an) + margin, 0) and how many of them exceed 1e-16 (the
  //   sentence-transformers loss is sum(loss_sums) / (sum(counts) + 1e-16)). With compute_grad,
  //   unit_grad [N, D] is the gradient of sum(loss_sums), computed in the same pass; else [0].
  m.def(
      "batch_all_triplet_loss_forward(Tensor embeddings, Tensor labels, str distance, float margin, "
      "bool compute_grad) -> (Tensor, Tensor, Tensor)");
  // Gradient of sum(grad_sums * loss_sums) w.r.t. embeddings: grad_sums[0] * unit_grad when
  // grad_sums is uniform and unit_grad was computed, else recomputed block-wise.
  m.def(
      "_batch_all_triplet_loss_backward(Tensor grad_sums, Tensor embeddings, Tensor labels, Tensor unit_grad, "
      "str distance, float margin) -> Tensor");
  // Semi-hard triplet loss, per anchor: (loss_sums [N], unit_grad) with loss_sums the sum over the
  //   anchor's positives of max((d_ap - d_semi_hard_negative) + margin, 0) (the sentence-transformers
  //   loss divides their total by the number of positive pairs) and unit_grad as for batch-all.
  m.def(
      "semi_hard_triplet_loss_forward(Tensor embeddings, Tensor labels, str distance, float margin, "
      "bool compute_grad) -> (Tensor, Tensor)");
  m.def(
      "_semi_hard_triplet_loss_backward(Tensor grad_sums, Tensor embeddings, Tensor labels, Tensor unit_grad, "
      "str distance, float margin) -> Tensor");
  // Masked in-batch softmax cross-entropy (InfoNCE) fused with the similarity GEMMs; the kernel of
  // GISTEmbedLoss (guide-filtered) and MultipleNegativesRankingLoss (unguided).
  //   anchors [N, D]; candidates [M, D] = the N positives then whole columns of N negatives;
  //   guide_anchors [N, Dg] / guide_candidates [M, Dg] (both or neither) float32/float64.
  //   Row i's softmax runs over scale * <a_i, candidates[:M]>, plus <a_i, anchors> if
  //   anchor_anchor, <p_i, anchors> if positive_anchor, <p_i, candidates[:K]> if
  //   K = positive_candidate_columns > 0. exclude_self drops a row's own columns (aa: j == i;
  //   p-candidates: j == i mod N). margin_strategy in {"none", "absolute", "relative"}: with
  //   "absolute"/"relative" an entry whose guide similarity exceeds t_i - margin (resp.
  //   t_i - |t_i| * margin), t_i = guide_sim(a_i, p_i), is dropped (never the pair (a_i, p_i));
  //   without guide tensors the student's own similarities guide (self-guided).
  // Returns (loss [N] = lse_i - scale * <a_i, p_i>, log_normalizer [N] = lse_i, saved for backward).
  m.def(
      "masked_infonce(Tensor anchors, Tensor candidates, Tensor? guide_anchors, Tensor? guide_candidates, "
      "float scale, str margin_strategy, float margin, bool anchor_anchor, bool positive_anchor, "
      "int positive_candidate_columns, bool exclude_self) -> (Tensor, Tensor)");
  // The mean over rows of masked_infonce's loss (same options), with its gradient computed in the
  // same pass when compute_grad: returns (loss [], grad_anchors [N, D], grad_candidates [M, D]), the
  // gradients of the mean ([0, D] each without compute_grad). MultipleNegativesRankingLoss's options
  // (masked_infonce_mnrl_rules.h): partition_mode "joint" (one softmax per row) or "per_direction"
  // (one per block, log-normalisers averaged); hardness_mode "none", "in_batch_negatives",
  // "hard_negatives" or "all_negatives" adds hardness_strength * stop_grad(sim) to the selected
  // query-to-doc logits. They come last, with defaults, so calls without them keep their meaning.
  m.def(
      "masked_infonce_mean(Tensor anchors, Tensor candidates, Tensor? guide_anchors, Tensor? guide_candidates, "
      "float scale, str margin_strategy, float margin, bool anchor_anchor, bool positive_anchor, "
      "int positive_candidate_columns, bool exclude_self, bool compute_grad, str partition_mode=\"joint\", "
      "str hardness_mode=\"none\", float hardness_strength=0.0) -> (Tensor, Tensor, Tensor)");
  // Recomputes the tiles and returns (grad_anchors [N, D], grad_candidates [M, D]) for grad_loss [N].
  m.def(
      "_masked_infonce_backward(Tensor grad_loss, Tensor anchors, Tensor candidates, Tensor? guide_anchors, "
      "Tensor? guide_candidates, Tensor log_normalizer, float scale, str margin_strategy, float margin, "
      "bool anchor_anchor, bool positive_anchor, int positive_candidate_columns, bool exclude_self) "
      "-> (Tensor, Tensor)");
  // A label-aware pair loss described as data (embedplug/pair_rules), interpreted per anchor
  // without an N x N matrix (rules: csrc/pair_rule_rules.h; params and codes are the rule as
  // embedplug.pair_rules.encode writes it). embeddings [N, D] float32/float64, labels [N] int64.
  // Returns (loss_sums [S, N], counted [S, N] int64, terms [S, N] int64, positive_pairs [N] int64,
  // negative_pairs [N] int64, unit_grad): S = 2 streams for a reducer over the pairs of each side,
  // else 1; per anchor and stream the sum of its terms, how many are > 0 in exact arithmetic (-1
  // where the rule does not make that known) and how many there are; the kept pairs; with
  // compute_grad, unit_grad [S, N, D] the gradient of each stream's sum, else [0]; and
  // near_duplicates [] int64, for distance rules the pairs of distinct rows within rounding of 0,
  // where torch.cdist's square root of a rounding (and its backward's division by its 1e-15 clamp)
  // is not reproducible: the caller runs the reference for such a batch.
  m.def(
      "pair_rule_forward(Tensor embeddings, Tensor labels, float[] params, int[] codes, bool compute_grad) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Gradient of sum(grad_loss_sums * loss_sums): unit_grad combined when each stream's incoming
  // gradient is one number, else recomputed.
  m.def(
      "_pair_rule_backward(Tensor grad_loss_sums, Tensor embeddings, Tensor labels, Tensor unit_grad, "
      "float[] params, int[] codes) -> Tensor");
}

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
#ifdef EMBEDPLUG_WITH_CUDA
  info["cuda_kernels"] = true;
#else
  info["cuda_kernels"] = false;
#endif
  info["parallel_backend"] = at::get_parallel_info();
  info["compiled_with_torch"] = std::to_string(TORCH_VERSION_MAJOR) + "." +
                                std::to_string(TORCH_VERSION_MINOR) + "." + std::to_string(TORCH_VERSION_PATCH);
#ifdef __VERSION__
  info["compiler"] = __VERSION__;
#endif
  return info;
}

}  // namespace

// The module itself only carries build information; ops live in the dispatcher.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("build_info", &build_info, "How this extension was compiled (a dict).");
}
