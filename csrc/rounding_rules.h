// Arithmetic that must round the same on both backends. nvcc contracts `a + x * y` and `a - x * y`
// into one fused multiply-add, which g++ on x86 does not; a comparison on a near tie (a GIST guide
// threshold, a mining margin, a guide similarity) would then fall on different sides on CPU and GPU.
// These functions round the product first everywhere: on the device through the _rn intrinsics,
// which nvcc never contracts; on the host as written (the CPU build targets x86-64 without -mfma,
// so g++ has no fused multiply-add to contract into).
#pragma once

#include <c10/macros/Macros.h>

namespace embedplug {

// sum + x * y, the product rounded first: the step of a sequential dot product (infonce::exact_dot).
C10_HOST_DEVICE inline float product_then_sum(float sum, float x, float y) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(sum, __fmul_rn(x, y));
#else
  return sum + x * y;
#endif
}
C10_HOST_DEVICE inline double product_then_sum(double sum, double x, double y) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(sum, __dmul_rn(x, y));
#else
  return sum + x * y;
#endif
}

// target - x * y, the product rounded first: relative thresholds such as t - |t| * margin.
C10_HOST_DEVICE inline float difference_of_product(float target, float x, float y) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(target, __fmul_rn(x, y));
#else
  return target - x * y;
#endif
}
C10_HOST_DEVICE inline double difference_of_product(double target, double x, double y) {
#ifdef __CUDA_ARCH__
  return __dsub_rn(target, __dmul_rn(x, y));
#else
  return target - x * y;
#endif
}

}  // namespace embedplug
