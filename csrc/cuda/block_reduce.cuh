// Block-wide reductions of the shared rule states, for the CUDA epilogues that give one thread block
// to a row: each thread folds its strided columns, then CUB merges the partials with the very merge
// the CPU kernels run (infonce::RunningLogSumExp::merge, the ArgExtreme merges). CUB's combination
// order is fixed by the block size, so results are the same run to run.
#pragma once

#include <cub/block/block_reduce.cuh>

#include "cuda/cuda_common.cuh"
#include "infonce_rules.h"

namespace embedplug {
namespace cuda {

template <typename scalar_t>
struct MergeLogSumExp {
  __device__ infonce::RunningLogSumExp<scalar_t> operator()(const infonce::RunningLogSumExp<scalar_t>& a,
                                                            const infonce::RunningLogSumExp<scalar_t>& b) const {
    infonce::RunningLogSumExp<scalar_t> merged = a;
    merged.merge(b);
    return merged;
  }
};

// The row's log-sum-exp state from every thread's partial one (valid in thread 0). The temporary
// storage is one per instantiation: callers reducing several states in a row put __syncthreads()
// between the calls.
template <typename scalar_t>
__device__ inline infonce::RunningLogSumExp<scalar_t> reduce_row_state(const infonce::RunningLogSumExp<scalar_t>& partial) {
  using BlockReduce = cub::BlockReduce<infonce::RunningLogSumExp<scalar_t>, kThreadsPerBlock>;
  __shared__ typename BlockReduce::TempStorage storage;
  return BlockReduce(storage).Reduce(partial, MergeLogSumExp<scalar_t>());
}

}  // namespace cuda
}  // namespace embedplug
