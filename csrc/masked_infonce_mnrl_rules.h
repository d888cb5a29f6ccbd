// The rules of masked_infonce_mean's MultipleNegativesRankingLoss options (sentence-transformers 6.2):
// hardness weighting of query-to-doc logits and per-direction softmax partitions. Host/device
// functions (no CUDA includes, no std containers), so the CPU kernel and the CUDA kernel run the
// same rule; the option parsing at the end is host-only.
//
// Hardness: on the query-to-doc block (block 0, columns = the N positives then whole columns of N
// hard negatives) the selected entries get logit = scale * s + strength * stop_grad(s): the forward
// value carries the extra term, d logit / d s stays scale. Partitions: "joint" is one softmax over
// every block of a row; "per_direction" is one softmax per block (query_to_doc, query_to_query,
// doc_to_query, doc_to_doc), the row's log-normaliser the mean of the blocks' log-sum-exps.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

#include "infonce_rules.h"

namespace embedplug {
namespace infonce_mnrl {

enum class HardnessMode : int { kNone, kInBatchNegatives, kHardNegatives, kAllNegatives };
enum class PartitionMode : int { kJoint, kPerDirection };

// At most four softmax blocks per row (query_to_doc, query_to_query, doc_to_query, doc_to_doc):
// fixed-size per-row arrays of group state.
constexpr int kMaxGroups = 4;

// Whether the hardness term applies to a query-to-doc entry. own_document: the column is one of
// the row's own documents (column mod N == row: its positive or one of its hard negatives);
// positive_column: the column is among the N positives (column < N).
C10_HOST_DEVICE inline bool hardness_applies(HardnessMode mode, bool own_document, bool positive_column) {
  switch (mode) {
    case HardnessMode::kInBatchNegatives:  // every other row's documents
      return !own_document;
    case HardnessMode::kHardNegatives:  // the row's own hard negatives only
      return own_document && !positive_column;
    case HardnessMode::kAllNegatives:  // everything but the positive itself
      return !(own_document && positive_column);
    default:
      return false;
  }
}

// logit (scale * s, or -inf where the entry is dropped) plus strength * s. A dropped entry stays
// dropped, whatever s is (a NaN similarity must not revive it).
template <typename T>
C10_HOST_DEVICE inline T hardened_logit(T logit, T similarity, T strength) {
  return logit == -std::numeric_limits<T>::infinity() ? logit : logit + strength * similarity;
}

// Which softmax (group) block b of a row belongs to, and how many groups a row has.
C10_HOST_DEVICE inline int partition_group(PartitionMode mode, int block) {
  return mode == PartitionMode::kJoint ? 0 : block;
}

C10_HOST_DEVICE inline int partition_group_count(PartitionMode mode, int num_blocks) {
  return mode == PartitionMode::kJoint ? 1 : num_blocks;
}

// The shift exp() runs at for a group whose maximum logit is group_max: a group is softmaxed like
// a whole row, so this is the row rule (infonce::softmax_shift: 0 for an all-dropped group).
template <typename T>
C10_HOST_DEVICE inline T group_shift(T group_max) {
  return embedplug::infonce::softmax_shift(group_max);
}

// The row's log-normaliser from its groups' maxima and sums of exp(logit - max): the mean of the
// groups' log-sum-exps, summed in block order as sentence-transformers sums them. One group (joint)
// gives exactly max + log(sum).
template <typename T>
C10_HOST_DEVICE inline T averaged_log_normalizer(const T* group_max, const T* group_sum, int groups) {
  T total = 0;
  for (int g = 0; g < groups; ++g) total += group_max[g] + std::log(group_sum[g]);
  return total / static_cast<T>(groups);
}

// d loss / d sim of an entry of a group is this coefficient times exp(logit - group max), for
// row_weight = (d loss / d logit) x (d logit / d sim) of a one-group row (scale / N for the mean):
// each group's softmax enters the log-normaliser with weight 1 / groups.
template <typename T>
C10_HOST_DEVICE inline T group_gradient_coefficient(T row_weight, T group_sum, int groups) {
  return row_weight / (static_cast<T>(groups) * group_sum);
}

// Host-only: the schema's strings.
inline HardnessMode parse_hardness_mode(c10::string_view name) {
  const std::string_view view(name.data(), name.size());
  if (view == "none") return HardnessMode::kNone;
  if (view == "in_batch_negatives") return HardnessMode::kInBatchNegatives;
  if (view == "hard_negatives") return HardnessMode::kHardNegatives;
  if (view == "all_negatives") return HardnessMode::kAllNegatives;
  TORCH_CHECK(false, "embedplug: unknown hardness_mode '", std::string(view),
              "'; expected one of 'none', 'in_batch_negatives', 'hard_negatives', 'all_negatives'");
}

inline PartitionMode parse_partition_mode(c10::string_view name) {
  const std::string_view view(name.data(), name.size());
  if (view == "joint") return PartitionMode::kJoint;
  if (view == "per_direction") return PartitionMode::kPerDirection;
  TORCH_CHECK(false, "embedplug: unknown partition_mode '", std::string(view),
              "'; expected 'joint' or 'per_direction'");
}

// The options as the kernels use them, checked.
struct MnrlOptions {
  PartitionMode partition = PartitionMode::kJoint;
  HardnessMode hardness = HardnessMode::kNone;
  double hardness_strength = 0.0;

  bool hardened() const { return hardness != HardnessMode::kNone && hardness_strength > 0.0; }
};

inline MnrlOptions make_mnrl_options(c10::string_view partition_mode, c10::string_view hardness_mode,
                                     double hardness_strength) {
  TORCH_CHECK(std::isfinite(hardness_strength) && hardness_strength >= 0.0,
              "embedplug: hardness_strength must be a finite non-negative number, got ", hardness_strength);
  return {parse_partition_mode(partition_mode), parse_hardness_mode(hardness_mode), hardness_strength};
}

}  // namespace infonce_mnrl
}  // namespace embedplug
