// Timing, device memory and reporting for the kernel benchmarks: CUDA events around each launch,
// L2 flushed between repetitions, median over the repetitions, a table on stdout and JSON on disk.
// Bandwidth is reported against the H200's measured copy bandwidth (4.28 TB/s, shared/gpu/README).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace asyncspade::bench {

constexpr double kPeakBytesPerSecond = 4.28e12;

// An owning device allocation (cudaFree on destruction).
class DeviceMemory {
 public:
  DeviceMemory() = default;
  static absl::StatusOr<DeviceMemory> Allocate(size_t bytes, const std::string& what);
  DeviceMemory(DeviceMemory&& other) noexcept;
  DeviceMemory& operator=(DeviceMemory&& other) noexcept;
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  ~DeviceMemory();

  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Allocates and copies a host vector to the device.
template <typename T>
absl::StatusOr<DeviceMemory> Upload(const std::vector<T>& host, const std::string& what);

struct TimingOptions {
  int warmup = 10;
  int reps = 100;
  bool flush_l2 = true;
  // How L2 is flushed when flush_l2: by writing a 256 MB buffer (false; the default, what every
  // earlier report used), which leaves ~L2-sized dirty lines that the timed kernel pays to write
  // back, or by reading it (true), which leaves only clean lines.
  bool clean_flush = false;
};

struct Timing {
  double median_us = 0.0;
  double min_us = 0.0;
  int reps = 0;
};

// Times `launch` (which enqueues work on the default stream and returns its launch status).
class Timer {
 public:
  static absl::StatusOr<Timer> Create(const TimingOptions& options);
  Timer(Timer&& other) noexcept;
  Timer& operator=(Timer&&) = delete;
  ~Timer();
  absl::StatusOr<Timing> Time(const std::function<cudaError_t()>& launch);

 private:
  Timer() = default;
  TimingOptions options_;
  cudaEvent_t start_ = nullptr;
  cudaEvent_t stop_ = nullptr;
  DeviceMemory flush_;  // written (or read) between repetitions so inputs do not stay in L2
  DeviceMemory sink_;   // ReadThroughL2's sink
};

struct Measurement {
  std::string kernel;
  std::string shape;
  Timing timing;
  double bytes = 0.0;  // the bytes the kernel must move (reads + writes)
  std::string target;  // e.g. "<= 30 us"; empty when none
  bool target_met = false;

  double achieved_tbps() const { return bytes / (timing.median_us * 1e-6) / 1e12; }
  double floor_us() const { return bytes / kPeakBytesPerSecond * 1e6; }
  double percent_of_floor() const { return 100.0 * floor_us() / timing.median_us; }
};

void PrintTable(const std::vector<Measurement>& measurements);
absl::Status WriteJson(const std::string& path, const std::vector<Measurement>& measurements,
                       const TimingOptions& options);

}  // namespace asyncspade::bench
