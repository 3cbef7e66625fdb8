#include "kernels/rope.h"

#include <cmath>
#include <numbers>

#include "glog/logging.h"

namespace asyncspade::kernels {

std::vector<float> ComputeRopeInvFreq(int head_dim, double theta, const RopeScaling& scaling) {
  const int half = head_dim / 2;
  std::vector<float> inv_freq(half);
  for (int i = 0; i < half; ++i) {
    // HF evaluates the base frequencies in fp32 (`base ** (arange(0, dim, 2).float() / dim)`).
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    const float base = static_cast<float>(1.0 / std::pow(theta, static_cast<double>(exponent)));
    double freq = base;
    if (scaling.type == RopeScaling::Type::kLlama3) {
      // transformers' _compute_llama3_parameters: long wavelengths are divided by `factor`, short
      // ones kept, and the band between is interpolated smoothly.
      const double old_context = scaling.original_max_position_embeddings;
      const double low_freq_wavelen = old_context / scaling.low_freq_factor;
      const double high_freq_wavelen = old_context / scaling.high_freq_factor;
      const double wavelen = 2.0 * std::numbers::pi / freq;
      if (wavelen > low_freq_wavelen) {
        freq = freq / scaling.factor;
      } else if (wavelen >= high_freq_wavelen) {
        const double smooth = (old_context / wavelen - scaling.low_freq_factor) /
                              (scaling.high_freq_factor - scaling.low_freq_factor);
        freq = (1.0 - smooth) * freq / scaling.factor + smooth * freq;
      }
    }
    inv_freq[i] = static_cast<float>(freq);
  }
  return inv_freq;
}

namespace cpu {
namespace {

inline void RotateHeads(float* x, int num_heads, int head_dim, const float* cos, const float* sin) {
  const int half = head_dim / 2;
  for (int h = 0; h < num_heads; ++h) {
    float* head = x + int64_t{h} * head_dim;
    for (int i = 0; i < half; ++i) {
      const float x1 = head[i];
      const float x2 = head[i + half];
      head[i] = x1 * cos[i] - x2 * sin[i];
      head[i + half] = x2 * cos[i] + x1 * sin[i];
    }
  }
}

}  // namespace

void Rope(float* q, float* k, const int32_t* positions, int num_tokens, int num_q_heads,
          int num_kv_heads, int head_dim, const float* inv_freq) {
  const int half = head_dim / 2;
  // head_dim is at most a few hundred: the per-token tables live on the stack.
  constexpr int kMaxHalf = 512;
  float cos[kMaxHalf];
  float sin[kMaxHalf];
  CHECK_LE(half, kMaxHalf) << "head_dim " << head_dim << " exceeds the RoPE kernel's limit";
  for (int t = 0; t < num_tokens; ++t) {
    const float position = static_cast<float>(positions[t]);
    for (int i = 0; i < half; ++i) {
      const float angle = position * inv_freq[i];
      cos[i] = std::cos(angle);
      sin[i] = std::sin(angle);
    }
    if (q != nullptr) RotateHeads(q + int64_t{t} * num_q_heads * head_dim, num_q_heads, head_dim, cos, sin);
    if (k != nullptr) RotateHeads(k + int64_t{t} * num_kv_heads * head_dim, num_kv_heads, head_dim, cos, sin);
  }
}

}  // namespace cpu
}  // namespace asyncspade::kernels
