#include "kernels/rope.h"

#include <gtest/gtest.h>

#include <cmath>
#include <complex>

#include "tests/unit/kernels/kernel_test_util.h"

namespace asyncspade::kernels {
namespace {

TEST(RopeInvFreqTest, DefaultIsThetaToTheMinusTwoIOverD) {
  for (auto [d, theta] : {std::pair{8, 10000.0}, std::pair{64, 100000.0}, std::pair{128, 1000000.0}}) {
    const std::vector<float> inv_freq = ComputeRopeInvFreq(d, theta, RopeScaling{});
    ASSERT_EQ(inv_freq.size(), size_t(d / 2));
    for (int i = 0; i < d / 2; ++i) {
      const double ref = std::pow(theta, -2.0 * i / d);
      EXPECT_NEAR(inv_freq[i], ref, 1e-6 * ref) << "d=" << d << " i=" << i;
    }
  }
}

TEST(RopeInvFreqTest, Llama3ScalingMatchesHandComputedValues) {
  // Llama-3.1 settings: theta 500000, head_dim 128, factor 8, low/high freq factor 1/4, original
  // context 8192. The expected values were worked out by hand from the rule (in double):
  // wavelength = 2π / f; > 8192 → f / 8; < 2048 → f; otherwise with s = (8192 / wavelength - 1) / 3,
  // (1 - s) f / 8 + s f.
  RopeScaling scaling;
  scaling.type = RopeScaling::Type::kLlama3;
  scaling.factor = 8.0;
  scaling.low_freq_factor = 1.0;
  scaling.high_freq_factor = 4.0;
  scaling.original_max_position_embeddings = 8192;
  const std::vector<float> inv_freq = ComputeRopeInvFreq(128, 500000.0, scaling);
  const std::vector<std::pair<int, double>> expected = {
      {0, 1.0},                       // wavelength 6.28: high frequency, kept
      {10, 0.12868737343265052},      // wavelength 48.8: kept
      {29, 0.002166570763503359},     // wavelength 2401.7: smoothed (f = 0.0026160992529)
      {30, 0.0013718935677611381},    // wavelength 2948.3: smoothed (f = 0.0021311195369)
      {34, 0.00017850781276799638},   // wavelength 6695.1: smoothed (f = 0.0009384738704)
      {35, 9.556212353964683e-05},    // wavelength 8218.7: low frequency, f / 8
      {63, 3.068925988914511e-07},    // f / 8
  };
  for (auto [i, ref] : expected) EXPECT_NEAR(inv_freq[i], ref, 2e-6 * ref) << "i=" << i;
}

// Rotation as complex multiplication: the pair (x[i], x[i + d/2]) is the complex number
// x[i] + j·x[i + d/2], multiplied by e^{j·angle}.
void RotateComplex(std::vector<double>* head, int d, double position, const std::vector<float>& inv_freq,
                   bool fp32_angle) {
  for (int i = 0; i < d / 2; ++i) {
    const double angle = fp32_angle ? double(float(position) * inv_freq[i]) : position * double(inv_freq[i]);
    const std::complex<double> z((*head)[i], (*head)[i + d / 2]);
    const std::complex<double> r = z * std::polar(1.0, angle);
    (*head)[i] = r.real();
    (*head)[i + d / 2] = r.imag();
  }
}

TEST(RopeTest, MatchesComplexRotation) {
  for (auto [tokens, hq, hkv, d] : {std::tuple{5, 4, 2, 16}, std::tuple{3, 8, 4, 8}, std::tuple{9, 2, 1, 128}}) {
    const std::vector<float> inv_freq = ComputeRopeInvFreq(d, 10000.0, RopeScaling{});
    const auto q0 = testing::RandomFloats(size_t(tokens) * hq * d, 31);
    const auto k0 = testing::RandomFloats(size_t(tokens) * hkv * d, 32);
    std::vector<int32_t> positions = testing::RandomIds(tokens, 4096, 33);
    positions[0] = 0;  // identity rotation
    std::vector<float> q = q0, k = k0;
    cpu::Rope(q.data(), k.data(), positions.data(), tokens, hq, hkv, d, inv_freq.data());

    auto check = [&](const std::vector<float>& in, const std::vector<float>& out, int heads) {
      for (int t = 0; t < tokens; ++t) {
        for (int h = 0; h < heads; ++h) {
          const size_t base = (size_t(t) * heads + h) * d;
          std::vector<double> exact(in.begin() + base, in.begin() + base + d);
          std::vector<double> loose = exact;
          RotateComplex(&exact, d, positions[t], inv_freq, /*fp32_angle=*/true);
          RotateComplex(&loose, d, positions[t], inv_freq, /*fp32_angle=*/false);
          for (int c = 0; c < d; ++c) {
            ASSERT_NEAR(out[base + c], exact[c], 2e-6) << "t=" << t << " h=" << h << " c=" << c;
            // Against the exact-angle rotation the only difference is the fp32 rounding of the
            // angle (≤ half an ulp of position · freq < 2.5e-4 rad for positions < 4096).
            ASSERT_NEAR(out[base + c], loose[c], 5e-4) << "t=" << t << " h=" << h << " c=" << c;
          }
          if (positions[t] == 0) {
            for (int c = 0; c < d; ++c) ASSERT_EQ(out[base + c], in[base + c]);
          }
        }
      }
    };
    check(q0, q, hq);
    check(k0, k, hkv);
  }
}

TEST(RopeTest, QueryOnlyLeavesKeysAlone) {
  const int d = 16;
  const std::vector<float> inv_freq = ComputeRopeInvFreq(d, 10000.0, RopeScaling{});
  auto q = testing::RandomFloats(2 * d, 34);
  const std::vector<int32_t> positions = {3, 7};
  const auto q0 = q;
  cpu::Rope(q.data(), nullptr, positions.data(), 2, 1, 1, d, inv_freq.data());
  EXPECT_NE(q, q0);
}

}  // namespace
}  // namespace asyncspade::kernels
