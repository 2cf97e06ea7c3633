// Mixed precision and the fused optimiser step, which tch does not bind:
// autocast for any device type with an explicit dtype (tch's `autocast`
// only toggles CUDA fp16), and libtorch's fused AdamW kernel. Both have CPU
// kernels, so the CPU tests exercise the same code the GPU path runs.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <vector>

namespace {

// 0: CPU, 1: CUDA.
c10::DeviceType device_type(int device) {
  return device == 1 ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
}

// 0: float16, 1: bfloat16.
c10::ScalarType scalar_type(int dtype) {
  return dtype == 1 ? c10::ScalarType::BFloat16 : c10::ScalarType::Half;
}

int dtype_code(c10::ScalarType t) { return t == c10::ScalarType::BFloat16 ? 1 : 0; }

void write_error(char* err, size_t len, const char* what) {
  if (err != nullptr && len > 0) {
    std::snprintf(err, len, "%s", what);
  }
}

}  // namespace

// Turn autocast on for `device` with `dtype`, remembering the previous state
// in prev[0] (enabled) and prev[1] (dtype) for ride_autocast_exit.
extern "C" int ride_autocast_enter(int device, int dtype, int* prev, char* err, size_t len) {
  try {
    auto d = device_type(device);
    prev[0] = at::autocast::is_autocast_enabled(d) ? 1 : 0;
    prev[1] = dtype_code(at::autocast::get_autocast_dtype(d));
    at::autocast::set_autocast_enabled(d, true);
    at::autocast::set_autocast_dtype(d, scalar_type(dtype));
    at::autocast::increment_nesting();
    return 0;
  } catch (const std::exception& e) {
    write_error(err, len, e.what());
    return 1;
  }
}

// Leave the region ride_autocast_enter opened: drop the cast cache when
// the outermost region ends, and restore the previous state.
extern "C" int ride_autocast_exit(int device, const int* prev, char* err, size_t len) {
  try {
    auto d = device_type(device);
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(d, prev[0] != 0);
    at::autocast::set_autocast_dtype(d, scalar_type(prev[1]));
    return 0;
  } catch (const std::exception& e) {
    write_error(err, len, e.what());
    return 1;
  }
}

// Whether autocast is on for `device`; its dtype code in *dtype.
extern "C" int ride_autocast_state(int device, int* dtype) {
  auto d = device_type(device);
  *dtype = dtype_code(at::autocast::get_autocast_dtype(d));
  return at::autocast::is_autocast_enabled(d) ? 1 : 0;
}

// One AdamW step over n parameters with libtorch's fused kernel
// (`torch.optim.AdamW(fused=True)`): `steps[i]` holds the step number
// already incremented, as torch's optimiser does before the call.
extern "C" int ride_fused_adamw(at::Tensor** params, at::Tensor** grads, at::Tensor** exp_avgs,
                                at::Tensor** exp_avg_sqs, at::Tensor** steps, size_t n, double lr,
                                double beta1, double beta2, double weight_decay, double eps,
                                char* err, size_t len) {
  try {
    std::vector<at::Tensor> p, g, m, v, s;
    p.reserve(n);
    g.reserve(n);
    m.reserve(n);
    v.reserve(n);
    s.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      p.push_back(*params[i]);
      g.push_back(*grads[i]);
      m.push_back(*exp_avgs[i]);
      v.push_back(*exp_avg_sqs[i]);
      s.push_back(*steps[i]);
    }
    at::NoGradGuard no_grad;
    at::_fused_adamw_(p, g, m, v, /*max_exp_avg_sqs=*/{}, s, lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false);
    return 0;
  } catch (const std::exception& e) {
    write_error(err, len, e.what());
    return 1;
  }
}

// Gradient clipping as `torch.nn.utils.clip_grad_norm_` (foreach path),
// entirely on the gradients' device so the step never waits for the host:
// the global L2 norm of all n gradients is written to *norm_out (a 0-d
// float tensor on that device) and, when max_norm > 0, every gradient is
// multiplied by min(1, max_norm / (norm + 1e-6)).
extern "C" int ride_clip_grad_norm(at::Tensor** grads, size_t n, double max_norm,
                                   at::Tensor* norm_out, char* err, size_t len) {
  try {
    std::vector<at::Tensor> g;
    g.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      g.push_back(*grads[i]);
    }
    at::NoGradGuard no_grad;
    auto norms = at::_foreach_norm(g, 2.0);
    auto total = at::linalg_vector_norm(at::stack(norms), 2.0);
    if (max_norm > 0.0) {
      auto coef = at::clamp_max(max_norm / (total + 1e-6), 1.0);
      at::_foreach_mul_(g, coef);
    }
    norm_out->copy_(total);
    return 0;
  } catch (const std::exception& e) {
    write_error(err, len, e.what());
    return 1;
  }
}
