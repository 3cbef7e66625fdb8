// The AsyncSpade query predictor: the next decode step's query of each (sequence, head) is
// extrapolated from a short window of its most recent queries by a ridge regression on scalar lag
// coefficients, fitted afresh at every step (training-free).
//
// Model. With the window's entries e_0 (oldest) .. e_{n-1} (newest, the current query q_t) and p
// lags, the coefficients a ∈ R^p minimise
//     Σ_{j=p}^{n-1} || e_j − Σ_{i=1}^{p} a_i e_{j−i} ||²  +  λ ||a||²,
// i.e. (A + λI) a = r with the p×p Gram A_ik = Σ_j <e_{j−i}, e_{j−k}> and r_i = Σ_j <e_j, e_{j−i}>.
// The prediction is q̂_{t+1} = Σ_i a_i e_{n−i}. The ridge is relative: λ = ε · trace(A) / p, so ε
// is scale-free (multiplying every query by c multiplies A by c² and leaves a unchanged); ε is
// QueryPredictorConfig::ridge_epsilon. The system is solved by Cholesky.
//
// Fallback to the last query q_t: mode kLastQuery; fewer than p + 1 entries in the window; or a
// Cholesky pivot that is not finite or not above kMinRelativePivot × the mean diagonal of A + λI
// (numerically singular: with ε ≥ 1e-5 this cannot happen on finite inputs; with ε = 0 it catches
// degenerate windows such as a repeated query, or an all-zero one). An empty window predicts zeros.
//
// Pre- or post-RoPE: the window holds whatever the caller appends. Because the model is a linear
// combination of whole vectors, a caller that stores pre-RoPE queries rotates the prediction to
// position t+1 itself; one that stores post-RoPE queries uses the prediction as it is (its lagged
// queries then carry their own positions' rotations). Both are the caller's choice.
#pragma once

#include <cstdint>

#include "kernels/kernel_types.h"

namespace asyncspade::kernels {

enum class QueryPredictionMode : uint8_t {
  kLastQuery,            // q̂ = q_t
  kRidgePerHead,         // one coefficient vector per (sequence, head)
  kRidgeSharedPerLayer,  // one per sequence: A and r summed over all heads of the layer, then solved
};

constexpr int kMaxQueryPredictionLags = 4;
constexpr int kMaxQueryWindow = 64;
constexpr double kMinRelativePivot = 1e-6;

struct QueryPredictionParams {
  QueryPredictionMode mode = QueryPredictionMode::kRidgePerHead;
  int lags = 3;                 // p, 1 ≤ p ≤ kMaxQueryPredictionLags and p < window
  float ridge_epsilon = 1e-3f;  // ε ≥ 0 (relative ridge, see above)
};

// The ring buffer of recent queries of one layer: `window` is [num_seqs, num_heads, window_size,
// head_dim]; per sequence, counts[b] ∈ [0, window_size] entries are valid and write_pos[b] ∈
// [0, window_size) is the slot the next query goes to, so the newest entry sits in slot
// (write_pos[b] − 1) mod window_size and entry x (0 = oldest) in (write_pos[b] − counts[b] + x) mod
// window_size. All heads of a sequence share its count and position.
struct QueryWindowShape {
  int num_seqs = 0;
  int num_heads = 0;
  int window_size = 0;  // W, 1 ≤ W ≤ kMaxQueryWindow
  int head_dim = 0;
};

namespace cpu {

// Writes queries [num_seqs, num_heads, head_dim] into each sequence's slot write_pos[b], then
// advances write_pos[b] (mod W) and counts[b] (up to W).
void AppendToQueryWindow(const float* queries, const QueryWindowShape& shape, float* window,
                         int32_t* counts, int32_t* write_pos);

// predicted [num_seqs, num_heads, head_dim]. Reference: Gram and right-hand side summed directly
// from the formula above in double precision, Cholesky in double.
void PredictQueries(const float* window, const QueryWindowShape& shape, const int32_t* counts,
                    const int32_t* write_pos, const QueryPredictionParams& params,
                    float* predicted);

}  // namespace cpu

namespace cuda {

// bf16 versions of the above (device pointers). AppendToQueryWindow: one CTA per sequence.
// PredictQueries: one CTA per sequence; a warp per head streams the window once, computing the
// band of inner products <e_x, e_{x−δ}> (δ ≤ p) from which A and r are summed; the p×p systems are
// solved by Cholesky in fp32; the prediction is written in bf16. head_dim ≤ 256.
// cudaErrorInvalidValue for parameters outside the documented ranges.
cudaError_t AppendToQueryWindow(const __nv_bfloat16* queries, const QueryWindowShape& shape,
                                __nv_bfloat16* window, int32_t* counts, int32_t* write_pos,
                                cudaStream_t stream);

cudaError_t PredictQueries(const __nv_bfloat16* window, const QueryWindowShape& shape,
                           const int32_t* counts, const int32_t* write_pos,
                           const QueryPredictionParams& params, __nv_bfloat16* predicted,
                           cudaStream_t stream);

}  // namespace cuda
}  // namespace asyncspade::kernels
