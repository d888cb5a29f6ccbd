// Dtype checks at the top of every op (CPU and CUDA alike), so that a raw torch.ops.embedplug call
// with the wrong dtype fails with a TypeError naming the op, the argument and what it takes, instead
// of "not implemented for 'Long'" from deep inside a dispatch macro. Host-only; no CUDA includes.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <initializer_list>
#include <optional>
#include <utility>

namespace embedplug {

// float32/float64 tensors of one dtype (the embedplug.ops wrappers upcast float16/bfloat16 first);
// undefined (absent optional) tensors are skipped.
inline void check_floating_inputs(const char* op,
                                  std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors) {
  const at::Tensor* first = nullptr;
  const char* first_name = nullptr;
  for (const auto& [name, tensor] : tensors) {
    if (tensor == nullptr || !tensor->defined()) continue;
    TORCH_CHECK_TYPE(tensor->scalar_type() == at::kFloat || tensor->scalar_type() == at::kDouble,
                     "embedplug::", op, ": ", name, " must be float32 or float64, got ", tensor->scalar_type(),
                     " (embedplug.ops upcasts float16/bfloat16 to float32 before calling the op)");
    if (first == nullptr) {
      first = tensor;
      first_name = name;
      continue;
    }
    TORCH_CHECK_TYPE(tensor->scalar_type() == first->scalar_type(), "embedplug::", op, ": ", name, " is ",
                     tensor->scalar_type(), " but ", first_name, " is ", first->scalar_type(),
                     "; give every floating input one dtype");
  }
}

inline const at::Tensor* optional_tensor(const std::optional<at::Tensor>& tensor) {
  return tensor.has_value() ? &*tensor : nullptr;
}

// Class labels and mined indices: int64.
inline void check_int64_input(const char* op, const char* name, const at::Tensor& tensor) {
  TORCH_CHECK_TYPE(tensor.scalar_type() == at::kLong, "embedplug::", op, ": ", name, " must be int64, got ",
                   tensor.scalar_type());
}

// A floating hyper-parameter that must be finite (margins): NaN or Inf would silently give 0 or a
// wrong number rather than an error.
inline void check_finite_option(const char* op, const char* name, double value) {
  TORCH_CHECK_VALUE(std::isfinite(value), "embedplug::", op, ": ", name, " must be a finite number, got ", value);
}

}  // namespace embedplug
