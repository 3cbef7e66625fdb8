// Helpers of the model-kernel GPU tests: device buffers, bf16 random data, error metrics, and a
// watchdog so that a hung kernel fails the binary instead of blocking the batch run.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/dtype.h"
#include "kernels/kernel_types.h"

namespace asyncspade::kernels::testing {

#define ASSERT_CUDA_OK(expr)                                                              \
  do {                                                                                   \
    const cudaError_t asyncspade_test_error_ = (expr);                                   \
    ASSERT_EQ(asyncspade_test_error_, cudaSuccess)                                       \
        << #expr << " failed: " << cudaGetErrorName(asyncspade_test_error_) << " ("      \
        << cudaGetErrorString(asyncspade_test_error_) << ")";                            \
  } while (0)

// Skips the test (with the reason) when this process sees no CUDA device.
#define SKIP_WITHOUT_CUDA_DEVICE()                                                           \
  do {                                                                                       \
    int asyncspade_device_count_ = 0;                                                        \
    if (cudaGetDeviceCount(&asyncspade_device_count_) != cudaSuccess ||                      \
        asyncspade_device_count_ == 0) {                                                     \
      GTEST_SKIP() << "no CUDA device visible: the GPU kernel tests need one";               \
    }                                                                                        \
  } while (0)

// Aborts the process if the test binary runs longer than `seconds` (a hung kernel never returns).
class Watchdog : public ::testing::Environment {
 public:
  explicit Watchdog(int seconds) : seconds_(seconds) {}
  void SetUp() override {
    std::thread([seconds = seconds_] {
      std::this_thread::sleep_for(std::chrono::seconds(seconds));
      std::fprintf(stderr, "FAIL: watchdog: the test binary ran longer than %d s (hung kernel?)\n",
                   seconds);
      std::fflush(stderr);
      std::_Exit(3);
    }).detach();
  }

 private:
  int seconds_;
};
inline ::testing::Environment* const kWatchdog =
    ::testing::AddGlobalTestEnvironment(new Watchdog(240));

// An owning device allocation of `count` elements of T.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t count) { Allocate(count); }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void Allocate(size_t count) {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    count_ = count;
    const cudaError_t e =
        cudaMalloc(reinterpret_cast<void**>(&ptr_), std::max<size_t>(count, 1) * sizeof(T));
    if (e != cudaSuccess) {
      ptr_ = nullptr;
      ADD_FAILURE() << "cudaMalloc of " << count * sizeof(T) << " bytes failed: "
                    << cudaGetErrorString(e);
    }
  }
  // An empty `host` leaves a valid 1-element allocation (kernels may still be handed the pointer)
  // and copies nothing.
  void Upload(const std::vector<T>& host) {
    if (host.size() != count_ || ptr_ == nullptr) Allocate(host.size());
    if (host.empty() || ptr_ == nullptr) return;
    const cudaError_t e =
        cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
    if (e != cudaSuccess) ADD_FAILURE() << "upload failed: " << cudaGetErrorString(e);
  }
  std::vector<T> Download() const {
    std::vector<T> host(count_);
    if (count_ == 0 || ptr_ == nullptr) return host;
    const cudaError_t e = cudaMemcpy(host.data(), ptr_, count_ * sizeof(T), cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) ADD_FAILURE() << "download failed: " << cudaGetErrorString(e);
    return host;
  }
  T* get() const { return ptr_; }
  size_t size() const { return count_; }

 private:
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

// bf16 tensors live on the host as raw uint16 bit patterns; the device API takes __nv_bfloat16*.
inline __nv_bfloat16* AsBf16(uint16_t* p) { return reinterpret_cast<__nv_bfloat16*>(p); }
inline const __nv_bfloat16* AsBf16(const uint16_t* p) {
  return reinterpret_cast<const __nv_bfloat16*>(p);
}

// Random values never equal to zero: uniform in ±[0.05, 1] × scale, rounded to bf16. `values`
// receives the bf16-rounded floats (what the fp32 reference must be run on).
inline std::vector<uint16_t> RandomBf16(size_t n, std::mt19937& rng, float scale,
                                        std::vector<float>* values) {
  std::uniform_real_distribution<float> magnitude(0.05f, 1.0f);
  std::bernoulli_distribution negative(0.5);
  std::vector<uint16_t> bits(n);
  values->resize(n);
  for (size_t i = 0; i < n; ++i) {
    float v = magnitude(rng) * scale;
    if (negative(rng)) v = -v;
    bits[i] = FloatToBf16(v);
    (*values)[i] = Bf16ToFloat(bits[i]);
  }
  return bits;
}

inline std::vector<float> Bf16ToFloats(const std::vector<uint16_t>& bits) {
  std::vector<float> out(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) out[i] = Bf16ToFloat(bits[i]);
  return out;
}

inline std::vector<uint16_t> FloatsToBf16(const std::vector<float>& values) {
  std::vector<uint16_t> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) out[i] = FloatToBf16(values[i]);
  return out;
}

struct Comparison {
  double relative_l2 = 0.0;  // ‖out − ref‖ / ‖ref‖
  double max_abs = 0.0;
  size_t non_finite = 0;  // NaN or inf in `out` where the reference is finite
};

inline Comparison Compare(const std::vector<float>& out, const std::vector<float>& ref) {
  Comparison c;
  double diff2 = 0.0;
  double ref2 = 0.0;
  for (size_t i = 0; i < out.size() && i < ref.size(); ++i) {
    if (!std::isfinite(out[i])) {
      ++c.non_finite;
      continue;
    }
    const double d = static_cast<double>(out[i]) - ref[i];
    diff2 += d * d;
    ref2 += static_cast<double>(ref[i]) * ref[i];
    c.max_abs = std::max(c.max_abs, std::abs(d));
  }
  c.relative_l2 = ref2 > 0.0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
  return c;
}

// The bf16 acceptance rule: relative L2 ≤ tolerance, no NaN/inf, and sizes equal.
#define EXPECT_CLOSE_BF16(out, ref, tolerance, what)                                          \
  do {                                                                                       \
    ASSERT_EQ((out).size(), (ref).size()) << what;                                           \
    const auto asyncspade_cmp_ = ::asyncspade::kernels::testing::Compare((out), (ref));      \
    EXPECT_EQ(asyncspade_cmp_.non_finite, 0u) << what << ": non-finite outputs";             \
    EXPECT_LE(asyncspade_cmp_.relative_l2, (tolerance))                                      \
        << what << ": relative L2 error " << asyncspade_cmp_.relative_l2 << " (max abs "     \
        << asyncspade_cmp_.max_abs << ")";                                                   \
  } while (0)

}  // namespace asyncspade::kernels::testing
