// Notice when a parameter's gradient is complete during backward, which
// tch does not bind: a post-accumulate-grad hook (the C++ side of
// `Tensor.register_post_accumulate_grad_hook`) that calls back into Rust
// with the parameter's index, so gradient buckets can be all-reduced while
// the rest of the backward pass still runs, as torch DDP does.
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <cstdio>
#include <exception>
#include <memory>

namespace {

using ReadyFn = void (*)(void* ctx, size_t index);

struct GradReadyHook : torch::autograd::PostAccumulateGradHook {
  GradReadyHook(ReadyFn fn, void* ctx, size_t index) : fn_(fn), ctx_(ctx), index_(index) {}
  void operator()(const torch::autograd::Variable& /*tensor*/) override { fn_(ctx_, index_); }
  ReadyFn fn_;
  void* ctx_;
  size_t index_;
};

void write_error(char* err, size_t len, const char* what) {
  if (err != nullptr && len > 0) {
    std::snprintf(err, len, "%s", what);
  }
}

}  // namespace

// Call fn(ctx, index) each time backward has accumulated into t's gradient
// (t must be a leaf that requires grad); replaces any earlier such hook.
extern "C" int ride_set_grad_ready_hook(at::Tensor* t, ReadyFn fn, void* ctx, size_t index,
                                        char* err, size_t len) {
  try {
    torch::autograd::impl::set_post_acc_grad_hooks(
        *t, std::make_unique<GradReadyHook>(fn, ctx, index));
    return 0;
  } catch (const std::exception& e) {
    write_error(err, len, e.what());
    return 1;
  }
}

// Remove the hook ride_set_grad_ready_hook installed on t.
extern "C" void ride_clear_grad_ready_hook(at::Tensor* t) {
  try {
    torch::autograd::impl::set_post_acc_grad_hooks(*t, nullptr);
  } catch (const std::exception&) {
    // A tensor without autograd metadata has no hook to remove.
  }
}
