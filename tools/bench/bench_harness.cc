#include "tools/bench/bench_harness.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/cuda_status.h"
#include "tools/bench/l2_flush.h"

namespace asyncspade::bench {

absl::StatusOr<DeviceMemory> DeviceMemory::Allocate(size_t bytes, const std::string& what) {
  DeviceMemory m;
  const cudaError_t error = cudaMalloc(&m.ptr_, std::max<size_t>(bytes, 1));
  if (error != cudaSuccess) {
    return absl::ResourceExhaustedError(absl::StrCat("allocating ", bytes, " bytes of device memory for ", what,
                                                     ": ", cudaGetErrorString(error)));
  }
  m.bytes_ = bytes;
  return m;
}

DeviceMemory::DeviceMemory(DeviceMemory&& other) noexcept
    : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceMemory& DeviceMemory::operator=(DeviceMemory&& other) noexcept {
  if (this != &other) {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = std::exchange(other.ptr_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

DeviceMemory::~DeviceMemory() {
  if (ptr_ != nullptr) cudaFree(ptr_);
}

template <typename T>
absl::StatusOr<DeviceMemory> Upload(const std::vector<T>& host, const std::string& what) {
  ASSIGN_OR_RETURN(DeviceMemory m, DeviceMemory::Allocate(host.size() * sizeof(T), what));
  RETURN_IF_CUDA_ERROR(cudaMemcpy(m.as<T>(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return m;
}
template absl::StatusOr<DeviceMemory> Upload(const std::vector<int32_t>&, const std::string&);
template absl::StatusOr<DeviceMemory> Upload(const std::vector<int64_t>&, const std::string&);
template absl::StatusOr<DeviceMemory> Upload(const std::vector<float>&, const std::string&);
template absl::StatusOr<DeviceMemory> Upload(const std::vector<uint16_t>&, const std::string&);

absl::StatusOr<Timer> Timer::Create(const TimingOptions& options) {
  Timer t;
  t.options_ = options;
  RETURN_IF_CUDA_ERROR(cudaEventCreate(&t.start_));
  RETURN_IF_CUDA_ERROR(cudaEventCreate(&t.stop_));
  if (options.flush_l2) {
    // Larger than any GPU's L2 (H200: 60 MB).
    ASSIGN_OR_RETURN(t.flush_, DeviceMemory::Allocate(size_t{256} << 20, "the L2 flush buffer"));
    ASSIGN_OR_RETURN(t.sink_, DeviceMemory::Allocate(sizeof(uint32_t), "the L2 flush sink"));
    if (options.clean_flush) {
      // Zeros, so that reading it (ReadThroughL2) never stores to the sink.
      RETURN_IF_CUDA_ERROR(cudaMemset(t.flush_.as<char>(), 0, t.flush_.bytes()));
    }
  }
  return t;
}

Timer::Timer(Timer&& other) noexcept
    : options_(other.options_),
      start_(std::exchange(other.start_, nullptr)),
      stop_(std::exchange(other.stop_, nullptr)),
      flush_(std::move(other.flush_)),
      sink_(std::move(other.sink_)) {}

Timer::~Timer() {
  if (start_ != nullptr) cudaEventDestroy(start_);
  if (stop_ != nullptr) cudaEventDestroy(stop_);
}

absl::StatusOr<Timing> Timer::Time(const std::function<cudaError_t()>& launch) {
  for (int i = 0; i < options_.warmup; ++i) RETURN_IF_CUDA_ERROR(launch());
  RETURN_IF_CUDA_ERROR(cudaDeviceSynchronize());
  std::vector<double> samples;
  for (int i = 0; i < options_.reps; ++i) {
    if (flush_.bytes() > 0) {
      if (options_.clean_flush) {
        RETURN_IF_CUDA_ERROR(ReadThroughL2(flush_.as<void>(), flush_.bytes(), sink_.as<uint32_t>(), nullptr));
      } else {
        RETURN_IF_CUDA_ERROR(cudaMemsetAsync(flush_.as<char>(), i & 0xff, flush_.bytes()));
      }
    }
    RETURN_IF_CUDA_ERROR(cudaEventRecord(start_));
    RETURN_IF_CUDA_ERROR(launch());
    RETURN_IF_CUDA_ERROR(cudaEventRecord(stop_));
    RETURN_IF_CUDA_ERROR(cudaEventSynchronize(stop_));
    float ms = 0.0f;
    RETURN_IF_CUDA_ERROR(cudaEventElapsedTime(&ms, start_, stop_));
    samples.push_back(ms * 1e3);
  }
  std::sort(samples.begin(), samples.end());
  Timing t;
  t.reps = options_.reps;
  t.min_us = samples.front();
  t.median_us = samples.size() % 2 ? samples[samples.size() / 2]
                                   : 0.5 * (samples[samples.size() / 2 - 1] + samples[samples.size() / 2]);
  return t;
}

void PrintTable(const std::vector<Measurement>& measurements) {
  std::printf("\n%-24s %-44s %10s %10s %10s %8s %10s %8s  %s\n", "kernel", "shape", "median us", "min us",
              "MB moved", "TB/s", "floor us", "% floor", "target");
  for (const Measurement& m : measurements) {
    std::printf("%-24s %-44s %10.1f %10.1f %10.2f %8.2f %10.1f %7.1f%%  %s%s\n", m.kernel.c_str(), m.shape.c_str(),
                m.timing.median_us, m.timing.min_us, m.bytes / 1e6, m.achieved_tbps(), m.floor_us(),
                m.percent_of_floor(), m.target.c_str(),
                m.target.empty() ? "" : (m.target_met ? " MET" : " MISSED"));
  }
  std::printf("floor = bytes / %.2f TB/s; %% floor = floor / median.\n", kPeakBytesPerSecond / 1e12);
}

absl::Status WriteJson(const std::string& path, const std::vector<Measurement>& measurements,
                       const TimingOptions& options) {
  nlohmann::json doc;
  int device = 0;
  cudaDeviceProp prop{};
  RETURN_IF_CUDA_ERROR(cudaGetDevice(&device));
  RETURN_IF_CUDA_ERROR(cudaGetDeviceProperties(&prop, device));
  doc["device"] = prop.name;
  doc["peak_bytes_per_second"] = kPeakBytesPerSecond;
  doc["warmup"] = options.warmup;
  doc["reps"] = options.reps;
  doc["l2_flushed"] = options.flush_l2;
  doc["results"] = nlohmann::json::array();
  for (const Measurement& m : measurements) {
    nlohmann::json r;
    r["kernel"] = m.kernel;
    r["shape"] = m.shape;
    r["median_us"] = m.timing.median_us;
    r["min_us"] = m.timing.min_us;
    r["bytes"] = m.bytes;
    r["achieved_tbps"] = m.achieved_tbps();
    r["floor_us"] = m.floor_us();
    r["percent_of_floor"] = m.percent_of_floor();
    if (!m.target.empty()) {
      r["target"] = m.target;
      r["target_met"] = m.target_met;
    }
    doc["results"].push_back(r);
  }
  std::ofstream out(path);
  if (!out) return absl::InvalidArgumentError(absl::StrCat("cannot write --json file ", path));
  out << doc.dump(2) << "\n";
  if (!out) return absl::InternalError(absl::StrCat("writing ", path, " failed"));
  return absl::OkStatus();
}

}  // namespace asyncspade::bench
