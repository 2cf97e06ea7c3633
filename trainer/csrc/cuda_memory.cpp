// The CUDA caching allocator's memory statistics, for the trainer's
// `ride_gpu_memory_*` metrics. tch has no binding for them; c10's generic
// DeviceAllocator interface gives them without CUDA's own headers, so this
// compiles on machines without the CUDA toolkit.
#include <c10/core/CachingDeviceAllocator.h>

#include <cstdint>

// Fills out[0..4] with the bytes allocated now, reserved now, allocated at
// peak and reserved at peak on CUDA device `device`. Returns 0 on success,
// 1 when the CUDA allocator has not been initialised (no CUDA tensor yet, or
// no GPU), 2 on any error (no CUDA support in this libtorch, bad device).
extern "C" int ride_cuda_memory_stats(int device, int64_t* out) {
  try {
    auto* allocator = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    if (allocator == nullptr || !allocator->initialized()) {
      return 1;
    }
    auto stats = allocator->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    constexpr auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    out[0] = stats.allocated_bytes[all].current;
    out[1] = stats.reserved_bytes[all].current;
    out[2] = stats.allocated_bytes[all].peak;
    out[3] = stats.reserved_bytes[all].peak;
    return 0;
  } catch (...) {
    return 2;
  }
}
