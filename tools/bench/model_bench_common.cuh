// Shared plumbing of the model-kernel benchmarks: checked CUDA calls (a failure prints the call and
// exits non-zero), random device data, CUDA-event timing (median after warm-up, L2 flushed clean
// before every timed repetition), a printed table and a JSON report.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace asyncspade::bench {

#define BENCH_CHECK_CUDA(expr)                                                               \
  do {                                                                                       \
    const cudaError_t bench_error_ = (expr);                                                 \
    if (bench_error_ != cudaSuccess) {                                                       \
      std::fprintf(stderr, "FAIL: %s:%d: %s failed: %s (%s)\n", __FILE__, __LINE__, #expr,   \
                   cudaGetErrorName(bench_error_), cudaGetErrorString(bench_error_));        \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

// HBM3e copy bandwidth of an H200 measured with a device-to-device copy: the floor of a kernel
// that must move B bytes is B / this.
constexpr double kReferenceBandwidthBytesPerSecond = 4.28e12;

__device__ __forceinline__ uint32_t BenchHash(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}

// Uniform in ±[0.05, 1.05) × scale: never zero, so no kernel is timed on a trivial input.
__global__ void FillRandomBf16Kernel(__nv_bfloat16* data, size_t n, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    const uint32_t h = BenchHash(seed * 0x9e3779b97f4a7c15ull + i);
    const float magnitude = 0.05f + static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
    data[i] = __float2bfloat16_rn((h & 1u) != 0 ? -magnitude * scale : magnitude * scale);
  }
}

__global__ void FillRandomFloatKernel(float* data, size_t n, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    const uint32_t h = BenchHash(seed * 0x9e3779b97f4a7c15ull + i);
    const float magnitude = 0.05f + static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
    data[i] = (h & 1u) != 0 ? -magnitude * scale : magnitude * scale;
  }
}

inline void FillRandom(__nv_bfloat16* data, size_t n, uint64_t seed, float scale = 1.0f) {
  FillRandomBf16Kernel<<<1024, 256>>>(data, n, seed, scale);
  BENCH_CHECK_CUDA(cudaGetLastError());
}
inline void FillRandom(float* data, size_t n, uint64_t seed, float scale = 1.0f) {
  FillRandomFloatKernel<<<1024, 256>>>(data, n, seed, scale);
  BENCH_CHECK_CUDA(cudaGetLastError());
}

template <typename T>
T* DeviceAlloc(size_t count) {
  void* p = nullptr;
  BENCH_CHECK_CUDA(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T)));
  return static_cast<T*>(p);
}

// Reads `n` 16-byte words so that they, and nothing else, are in L2 afterwards: clean lines.
__global__ void ReadFlushKernel(const uint4* __restrict__ data, size_t n, uint32_t* sink) {
  uint32_t folded = 0;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    const uint4 v = data[i];
    folded ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (folded == 0x9e3779b9u) *sink = folded;  // keeps the loads; the buffer is all zeros
}

// How the L2 cache is emptied before each timed run.
enum class L2Flush {
  // Read a buffer larger than L2: the timed kernel starts cold with only clean lines in L2, as a
  // decode step does (the kernels before it write little). The default.
  kClean,
  // Write a buffer larger than L2 (the first GPU run's method): ~50 MB of dirty lines stay in L2
  // and the timed kernel pays their write-back, which understates a bandwidth-bound kernel by up
  // to 2x (e.g. a 33 MB GEMM). Kept only to show that effect next to the clean numbers.
  kDirty,
};

// Times `launch` (which enqueues on `stream`) `reps` times after `warmup` untimed runs, each timed
// run preceded by an untimed L2 flush (see L2Flush) so no run starts with a warm cache. Returns
// the median in microseconds.
class Timer {
 public:
  Timer() {
    BENCH_CHECK_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    BENCH_CHECK_CUDA(cudaEventCreate(&start_));
    BENCH_CHECK_CUDA(cudaEventCreate(&stop_));
    flush_ = DeviceAlloc<char>(kFlushBytes);
    sink_ = DeviceAlloc<uint32_t>(1);
    BENCH_CHECK_CUDA(cudaMemset(flush_, 0, kFlushBytes));
    BENCH_CHECK_CUDA(cudaDeviceSynchronize());
  }
  ~Timer() {
    cudaFree(flush_);
    cudaFree(sink_);
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
    cudaStreamDestroy(stream_);
  }
  cudaStream_t stream() const { return stream_; }

  void Flush(L2Flush mode) {
    if (mode == L2Flush::kDirty) {
      BENCH_CHECK_CUDA(cudaMemsetAsync(flush_, 0, kFlushBytes, stream_));
      return;
    }
    ReadFlushKernel<<<1024, 256, 0, stream_>>>(reinterpret_cast<const uint4*>(flush_),
                                                kFlushBytes / sizeof(uint4), sink_);
    BENCH_CHECK_CUDA(cudaGetLastError());
  }

  template <typename Launch>
  double MedianMicros(Launch&& launch, int warmup, int reps, L2Flush flush = L2Flush::kClean) {
    for (int i = 0; i < warmup; ++i) launch(stream_);
    BENCH_CHECK_CUDA(cudaStreamSynchronize(stream_));
    std::vector<double> times;
    for (int i = 0; i < reps; ++i) {
      Flush(flush);
      BENCH_CHECK_CUDA(cudaEventRecord(start_, stream_));
      launch(stream_);
      BENCH_CHECK_CUDA(cudaEventRecord(stop_, stream_));
      BENCH_CHECK_CUDA(cudaEventSynchronize(stop_));
      float ms = 0.0f;
      BENCH_CHECK_CUDA(cudaEventElapsedTime(&ms, start_, stop_));
      times.push_back(ms * 1e3);
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
  }

 private:
  static constexpr size_t kFlushBytes = size_t{256} << 20;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t start_ = nullptr;
  cudaEvent_t stop_ = nullptr;
  char* flush_ = nullptr;
  uint32_t* sink_ = nullptr;
};

// Device-to-device copy bandwidth (read + write bytes / time) on `bytes` of data: the practical
// ceiling for bandwidth-bound kernels on this GPU, measured in the same run.
inline double MeasureCopyBytesPerSecond(Timer& timer, size_t bytes, int reps) {
  char* src = DeviceAlloc<char>(bytes);
  char* dst = DeviceAlloc<char>(bytes);
  BENCH_CHECK_CUDA(cudaMemset(src, 1, bytes));
  const double us = timer.MedianMicros(
      [&](cudaStream_t s) {
        BENCH_CHECK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s));
      },
      3, reps);
  BENCH_CHECK_CUDA(cudaFree(src));
  BENCH_CHECK_CUDA(cudaFree(dst));
  return 2.0 * static_cast<double>(bytes) / (us * 1e-6);
}

// One row of results; `extra` is pre-formatted JSON members (may be empty).
struct BenchRow {
  std::string kernel;
  std::string shape;
  double micros = 0.0;
  double bytes = 0.0;  // bytes the kernel must move (0: not bandwidth-bound, e.g. prefill)
  double flops = 0.0;
  std::string extra;
};

inline void PrintHeader() {
  std::printf("%-30s %-44s %11s %11s %8s %9s %10s %7s\n", "kernel", "shape", "median_us",
              "bytes_MB", "TB/s", "floor_us", "%_of_floor", "TFLOP/s");
}

inline void PrintRow(const BenchRow& r) {
  const double tbps = r.bytes > 0 ? r.bytes / (r.micros * 1e-6) / 1e12 : 0.0;
  const double floor_us = r.bytes / kReferenceBandwidthBytesPerSecond * 1e6;
  const double tflops = r.flops > 0 ? r.flops / (r.micros * 1e-6) / 1e12 : 0.0;
  std::printf("%-30s %-44s %11.2f %11.2f %8.3f %9.2f %9.1f%% %7.1f\n", r.kernel.c_str(),
              r.shape.c_str(), r.micros, r.bytes / 1e6, tbps, floor_us,
              r.micros > 0 ? 100.0 * floor_us / r.micros : 0.0, tflops);
  std::fflush(stdout);
}

inline bool WriteJson(const std::string& path, const std::string& benchmark, double copy_tbps,
                      const std::vector<BenchRow>& rows) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) {
    std::fprintf(stderr, "FAIL: cannot write %s: %s\n", path.c_str(), std::strerror(errno));
    return false;
  }
  cudaDeviceProp prop{};
  int device = 0;
  cudaGetDevice(&device);
  cudaGetDeviceProperties(&prop, device);
  std::fprintf(f, "{\n  \"benchmark\": \"%s\",\n  \"device\": \"%s\",\n", benchmark.c_str(),
               prop.name);
  std::fprintf(f, "  \"reference_bandwidth_tbps\": %.3f,\n  \"measured_copy_tbps\": %.4f,\n",
               kReferenceBandwidthBytesPerSecond / 1e12, copy_tbps);
  std::fprintf(f, "  \"results\": [\n");
  for (size_t i = 0; i < rows.size(); ++i) {
    const BenchRow& r = rows[i];
    const double tbps = r.bytes > 0 ? r.bytes / (r.micros * 1e-6) / 1e12 : 0.0;
    const double floor_us = r.bytes / kReferenceBandwidthBytesPerSecond * 1e6;
    std::fprintf(f,
                 "    {\"kernel\": \"%s\", \"shape\": \"%s\", \"median_us\": %.3f, \"bytes\": %.0f, "
                 "\"tbps\": %.4f, \"floor_us\": %.3f, \"fraction_of_floor\": %.4f, "
                 "\"tflops\": %.3f%s%s}%s\n",
                 r.kernel.c_str(), r.shape.c_str(), r.micros, r.bytes, tbps, floor_us,
                 r.micros > 0 ? floor_us / r.micros : 0.0,
                 r.flops > 0 ? r.flops / (r.micros * 1e-6) / 1e12 : 0.0,
                 r.extra.empty() ? "" : ", ", r.extra.c_str(), i + 1 < rows.size() ? "," : "");
  }
  std::fprintf(f, "  ]\n}\n");
  std::fclose(f);
  std::printf("wrote %s\n", path.c_str());
  return true;
}

// Minimal flag parsing shared by the benchmarks: --json FILE, --reps N, --quick.
struct BenchFlags {
  std::string json_path;
  int reps = 50;
  int warmup = 5;
  bool quick = false;
};

inline BenchFlags ParseFlags(int argc, char** argv, const char* usage) {
  BenchFlags flags;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--json" && i + 1 < argc) {
      flags.json_path = argv[++i];
    } else if (arg == "--reps" && i + 1 < argc) {
      flags.reps = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--quick") {
      flags.quick = true;
    } else {
      std::fprintf(stderr, "unknown argument '%s'\n%s", arg.c_str(), usage);
      std::exit(2);
    }
  }
  return flags;
}

}  // namespace asyncspade::bench
