#include "services/decode_worker/model/cuda/cuda_model_weights.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/status.h"
#include "kernels/cuda_status.h"
#include "services/decode_worker/model/cuda/runner_kernels.h"

namespace asyncspade {
namespace cuda_engine {

// How a random tensor is drawn (checkpoint loading ignores it).
enum class WeightKind { kEmbedding, kProjection, kNorm, kBias };

// Rows [row0, row0 + rows) × columns [col0, col0 + cols) of the logical tensor `name` whose full
// shape is `shape` ([n] is treated as [n, 1]).
struct TensorSlice {
  std::string name;
  std::vector<int64_t> shape;
  int64_t row0 = 0;
  int64_t rows = 0;
  int64_t col0 = 0;
  int64_t cols = 0;
  WeightKind kind = WeightKind::kProjection;

  int64_t full_cols() const { return shape.size() > 1 ? shape[1] : 1; }
};

class WeightWriter {
 public:
  virtual ~WeightWriter() = default;
  // Writes the slice into `dst` (device, row pitch `dst_ld` elements).
  virtual absl::Status Write(const TensorSlice& slice, __nv_bfloat16* dst, int64_t dst_ld) = 0;
};

namespace {

// Converts slices of the mapped checkpoint to bf16 in a pinned staging buffer and copies them row
// block by row block (cudaMemcpy2D puts each row at its pitch in the destination).
class CheckpointWriter : public WeightWriter {
 public:
  explicit CheckpointWriter(const Checkpoint& checkpoint) : checkpoint_(checkpoint) {}

  absl::Status Init() {
    ASSIGN_OR_RETURN(staging_, PinnedMemory::Allocate(kStagingBytes, "checkpoint upload staging"));
    return absl::OkStatus();
  }

  absl::Status Write(const TensorSlice& slice, __nv_bfloat16* dst, int64_t dst_ld) override {
    ASSIGN_OR_RETURN(const TensorView* view, checkpoint_.Get(slice.name, slice.shape));
    const DType dtype = view->dtype;
    if (dtype != DType::kF32 && dtype != DType::kBF16 && dtype != DType::kF16) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", slice.name, "' in ", view->file, " has dtype ",
                                                     std::string(DTypeName(dtype)),
                                                     "; the CUDA runner reads F32, BF16 or F16"));
    }
    const size_t element_bytes = DTypeSize(dtype);
    const int64_t full_cols = slice.full_cols();
    const int64_t rows_per_chunk =
        std::max<int64_t>(1, static_cast<int64_t>(kStagingBytes / (sizeof(uint16_t) * slice.cols)));
    uint16_t* staging = staging_.at<uint16_t>(0);
    for (int64_t r0 = 0; r0 < slice.rows; r0 += rows_per_chunk) {
      const int64_t n = std::min(rows_per_chunk, slice.rows - r0);
      for (int64_t r = 0; r < n; ++r) {
        const uint8_t* src = view->data + ((slice.row0 + r0 + r) * full_cols + slice.col0) * element_bytes;
        uint16_t* out = staging + r * slice.cols;
        if (dtype == DType::kBF16) {
          std::memcpy(out, src, slice.cols * sizeof(uint16_t));
          continue;
        }
        for (int64_t c = 0; c < slice.cols; ++c) {
          const uint8_t* element = src + c * element_bytes;
          if (dtype == DType::kF32) {
            float value;
            std::memcpy(&value, element, sizeof(float));
            out[c] = FloatToBf16(value);
          } else {
            uint16_t half;
            std::memcpy(&half, element, sizeof(uint16_t));
            out[c] = FloatToBf16(F16ToFloat(half));
          }
        }
      }
      RETURN_IF_CUDA_ERROR(cudaMemcpy2D(dst + r0 * dst_ld, dst_ld * sizeof(uint16_t), staging,
                                        slice.cols * sizeof(uint16_t), slice.cols * sizeof(uint16_t), n,
                                        cudaMemcpyHostToDevice));
    }
    return absl::OkStatus();
  }

 private:
  static constexpr size_t kStagingBytes = size_t{64} << 20;
  const Checkpoint& checkpoint_;
  PinnedMemory staging_;
};

// FNV-1a of the tensor name: the tensor's identity in the random-weights hash.
uint64_t NameId(const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : name) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

class RandomWriter : public WeightWriter {
 public:
  RandomWriter(uint64_t seed, int hidden) : seed_(seed), hidden_(hidden) {}

  absl::Status Write(const TensorSlice& slice, __nv_bfloat16* dst, int64_t dst_ld) override {
    float center = 0.0f;
    float half_width = 0.0f;
    switch (slice.kind) {
      case WeightKind::kEmbedding:
        half_width = std::sqrt(3.0f / static_cast<float>(hidden_));
        break;
      case WeightKind::kProjection:
        half_width = std::sqrt(3.0f / static_cast<float>(slice.full_cols()));
        break;
      case WeightKind::kNorm:
        center = 1.0f;
        half_width = 0.05f;
        break;
      case WeightKind::kBias:
        half_width = 0.1f;
        break;
    }
    RETURN_IF_CUDA_ERROR(cuda_engine::FillUniformBf16(dst, slice.rows, slice.cols, dst_ld, seed_, NameId(slice.name),
                                                      slice.row0, slice.col0, slice.full_cols(), center, half_width,
                                                      nullptr));
    return absl::OkStatus();
  }

 private:
  uint64_t seed_;
  int hidden_;
};

int RoundUp8(int x) { return (x + 7) / 8 * 8; }

}  // namespace
}  // namespace cuda_engine

absl::StatusOr<CudaRankShape> CudaRankShape::For(const ModelConfig& c, int tp_size, int rank) {
  auto invalid = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("the CUDA runner cannot run this model", tp_size > 1 ? " with " : "",
                                                   tp_size > 1 ? absl::StrCat("tensor_parallel_size ", tp_size) : "",
                                                   ": ", what));
  };
  if (tp_size < 1 || rank < 0 || rank >= tp_size) {
    return absl::InvalidArgumentError(absl::StrCat("tensor-parallel rank ", rank, " of ", tp_size, " is invalid"));
  }
  if (c.hidden_size <= 0 || c.hidden_size % 8 != 0) {
    return invalid(absl::StrCat("hidden_size ", c.hidden_size, " must be a positive multiple of 8"));
  }
  if (c.head_dim <= 0 || c.head_dim % 8 != 0 || c.head_dim > 256) {
    return invalid(absl::StrCat("head_dim ", c.head_dim, " must be a multiple of 8 and at most 256"));
  }
  if (c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0) {
    return invalid(absl::StrCat("num_attention_heads ", c.num_heads, " is not a multiple of num_key_value_heads ",
                                c.num_kv_heads));
  }
  if (c.num_kv_heads % tp_size != 0) {
    return invalid(absl::StrCat("num_key_value_heads ", c.num_kv_heads,
                                " must be divisible by tensor_parallel_size (KV heads are not replicated)"));
  }
  if (c.intermediate_size <= 0 || c.intermediate_size % tp_size != 0) {
    return invalid(
        absl::StrCat("intermediate_size ", c.intermediate_size, " must be divisible by tensor_parallel_size"));
  }
  if (c.vocab_size <= 0 || c.num_layers <= 0) return invalid("vocab_size and num_hidden_layers must be positive");
  CudaRankShape s;
  s.tp_size = tp_size;
  s.rank = rank;
  s.hidden = c.hidden_size;
  s.head_dim = c.head_dim;
  s.num_q_heads = c.num_heads / tp_size;
  s.num_kv_heads = c.num_kv_heads / tp_size;
  s.q_size = s.num_q_heads * c.head_dim;
  s.kv_size = s.num_kv_heads * c.head_dim;
  s.qkv_size = s.q_size + 2 * s.kv_size;
  s.intermediate = c.intermediate_size / tp_size;
  s.intermediate_padded = cuda_engine::RoundUp8(s.intermediate);
  s.vocab = c.vocab_size;
  s.vocab_padded = cuda_engine::RoundUp8(c.vocab_size);
  return s;
}

absl::StatusOr<std::unique_ptr<CudaModelWeights>> CudaModelWeights::FromCheckpoint(const ModelConfig& config,
                                                                                   const Checkpoint& checkpoint,
                                                                                   int tp_size, int rank) {
  if (!config.tie_word_embeddings && !checkpoint.Has("lm_head.weight")) {
    return absl::NotFoundError(
        "checkpoint has no 'lm_head.weight' and config.json sets tie_word_embeddings=false; set "
        "tie_word_embeddings=true if the head shares the embedding");
  }
  cuda_engine::CheckpointWriter writer(checkpoint);
  RETURN_IF_ERROR(writer.Init());
  return Build(config, tp_size, rank, writer);
}

absl::StatusOr<std::unique_ptr<CudaModelWeights>> CudaModelWeights::Random(const ModelConfig& config, uint64_t seed,
                                                                           int tp_size, int rank) {
  cuda_engine::RandomWriter writer(seed, config.hidden_size);
  return Build(config, tp_size, rank, writer);
}

absl::StatusOr<std::unique_ptr<CudaModelWeights>> CudaModelWeights::Build(const ModelConfig& config, int tp_size,
                                                                          int rank, cuda_engine::WeightWriter& writer) {
  using cuda_engine::TensorSlice;
  using cuda_engine::WeightKind;
  ASSIGN_OR_RETURN(const CudaRankShape s, CudaRankShape::For(config, tp_size, rank));
  auto weights = std::unique_ptr<CudaModelWeights>(new CudaModelWeights());
  weights->config_ = config;
  weights->shape_ = s;
  const int64_t hidden = s.hidden;
  const int64_t d = s.head_dim;
  const int64_t q_total = config.q_size();
  const int64_t kv_total = config.kv_size();
  const int64_t inter_total = config.intermediate_size;
  const bool has_lm_head = rank == 0;
  const bool separate_lm_head = has_lm_head && !config.tie_word_embeddings;
  const bool has_o_bias = config.o_proj_bias && rank == 0;

  // Offsets of every tensor in one allocation.
  cuda_engine::OffsetPlanner planner;
  const size_t embed_at = planner.AddArray<uint16_t>(size_t(s.vocab_padded) * hidden);
  const size_t lm_head_at = separate_lm_head ? planner.AddArray<uint16_t>(size_t(s.vocab_padded) * hidden) : 0;
  const size_t final_norm_at = planner.AddArray<uint16_t>(hidden);
  struct LayerOffsets {
    size_t input_norm, post_norm, qkv, qkv_bias, q_norm, k_norm, o, o_bias, gate_up, down;
  };
  std::vector<LayerOffsets> offsets(config.num_layers);
  for (LayerOffsets& o : offsets) {
    o.input_norm = planner.AddArray<uint16_t>(hidden);
    o.post_norm = planner.AddArray<uint16_t>(hidden);
    o.qkv = planner.AddArray<uint16_t>(size_t(s.qkv_size) * hidden);
    o.qkv_bias = config.attention_bias ? planner.AddArray<uint16_t>(s.qkv_size) : 0;
    o.q_norm = config.qk_norm ? planner.AddArray<uint16_t>(d) : 0;
    o.k_norm = config.qk_norm ? planner.AddArray<uint16_t>(d) : 0;
    o.o = planner.AddArray<uint16_t>(size_t(hidden) * s.q_size);
    o.o_bias = has_o_bias ? planner.AddArray<uint16_t>(hidden) : 0;
    o.gate_up = planner.AddArray<uint16_t>(size_t(2) * s.intermediate_padded * hidden);
    o.down = planner.AddArray<uint16_t>(size_t(hidden) * s.intermediate_padded);
  }
  ASSIGN_OR_RETURN(weights->memory_,
                   cuda_engine::DeviceMemory::Allocate(planner.total(), absl::StrCat("the weights of rank ", rank)));
  // Padding rows/columns must be zero (exactness of the padding argument).
  RETURN_IF_CUDA_ERROR(cudaMemset(weights->memory_.get(), 0, planner.total()));
  const cuda_engine::DeviceMemory& m = weights->memory_;
  auto at = [&](size_t offset) { return m.at<__nv_bfloat16>(offset); };
  auto write = [&](const std::string& name, std::vector<int64_t> shape, int64_t row0, int64_t rows, int64_t col0,
                   int64_t cols, WeightKind kind, __nv_bfloat16* dst, int64_t dst_ld) {
    TensorSlice slice{name, std::move(shape), row0, rows, col0, cols, kind};
    return Annotate(writer.Write(slice, dst, dst_ld),
                    absl::StrCat("loading '", name, "' for tensor-parallel rank ", rank));
  };
  auto write_vector = [&](const std::string& name, int64_t n, WeightKind kind, __nv_bfloat16* dst) {
    return write(name, {n}, 0, n, 0, 1, kind, dst, 1);
  };

  const int64_t vocab = s.vocab;
  RETURN_IF_ERROR(write("model.embed_tokens.weight", {vocab, hidden}, 0, vocab, 0, hidden, WeightKind::kEmbedding,
                        at(embed_at), hidden));
  weights->embed_tokens_ = at(embed_at);
  if (separate_lm_head) {
    RETURN_IF_ERROR(
        write("lm_head.weight", {vocab, hidden}, 0, vocab, 0, hidden, WeightKind::kProjection, at(lm_head_at), hidden));
    weights->lm_head_ = at(lm_head_at);
  } else if (has_lm_head) {
    weights->lm_head_ = weights->embed_tokens_;
  }
  RETURN_IF_ERROR(write_vector("model.norm.weight", hidden, WeightKind::kNorm, at(final_norm_at)));
  weights->final_norm_ = at(final_norm_at);

  const int64_t q_local = s.q_size, kv_local = s.kv_size, inter_local = s.intermediate;
  const int64_t q_row0 = int64_t{rank} * q_local, kv_row0 = int64_t{rank} * kv_local;
  const int64_t inter_row0 = int64_t{rank} * inter_local;
  weights->layers_.resize(config.num_layers);
  for (int i = 0; i < config.num_layers; ++i) {
    const LayerOffsets& o = offsets[i];
    CudaLayerWeights& layer = weights->layers_[i];
    const std::string p = absl::StrCat("model.layers.", i, ".");
    const std::string attn = p + "self_attn.";
    const std::string mlp = p + "mlp.";
    RETURN_IF_ERROR(write_vector(p + "input_layernorm.weight", hidden, WeightKind::kNorm, at(o.input_norm)));
    RETURN_IF_ERROR(write_vector(p + "post_attention_layernorm.weight", hidden, WeightKind::kNorm, at(o.post_norm)));
    __nv_bfloat16* qkv = at(o.qkv);
    RETURN_IF_ERROR(write(attn + "q_proj.weight", {q_total, hidden}, q_row0, q_local, 0, hidden,
                          WeightKind::kProjection, qkv, hidden));
    RETURN_IF_ERROR(write(attn + "k_proj.weight", {kv_total, hidden}, kv_row0, kv_local, 0, hidden,
                          WeightKind::kProjection, qkv + q_local * hidden, hidden));
    RETURN_IF_ERROR(write(attn + "v_proj.weight", {kv_total, hidden}, kv_row0, kv_local, 0, hidden,
                          WeightKind::kProjection, qkv + (q_local + kv_local) * hidden, hidden));
    if (config.attention_bias) {
      __nv_bfloat16* bias = at(o.qkv_bias);
      RETURN_IF_ERROR(write(attn + "q_proj.bias", {q_total}, q_row0, q_local, 0, 1, WeightKind::kBias, bias, 1));
      RETURN_IF_ERROR(
          write(attn + "k_proj.bias", {kv_total}, kv_row0, kv_local, 0, 1, WeightKind::kBias, bias + q_local, 1));
      RETURN_IF_ERROR(write(attn + "v_proj.bias", {kv_total}, kv_row0, kv_local, 0, 1, WeightKind::kBias,
                            bias + q_local + kv_local, 1));
      layer.qkv_bias = bias;
    }
    if (config.qk_norm) {
      RETURN_IF_ERROR(write_vector(attn + "q_norm.weight", d, WeightKind::kNorm, at(o.q_norm)));
      RETURN_IF_ERROR(write_vector(attn + "k_norm.weight", d, WeightKind::kNorm, at(o.k_norm)));
      layer.q_norm = at(o.q_norm);
      layer.k_norm = at(o.k_norm);
    }
    RETURN_IF_ERROR(write(attn + "o_proj.weight", {hidden, q_total}, 0, hidden, q_row0, q_local,
                          WeightKind::kProjection, at(o.o), q_local));
    if (has_o_bias) {
      RETURN_IF_ERROR(write_vector(attn + "o_proj.bias", hidden, WeightKind::kBias, at(o.o_bias)));
      layer.o_bias = at(o.o_bias);
    }
    __nv_bfloat16* gate_up = at(o.gate_up);
    RETURN_IF_ERROR(write(mlp + "gate_proj.weight", {inter_total, hidden}, inter_row0, inter_local, 0, hidden,
                          WeightKind::kProjection, gate_up, hidden));
    RETURN_IF_ERROR(write(mlp + "up_proj.weight", {inter_total, hidden}, inter_row0, inter_local, 0, hidden,
                          WeightKind::kProjection, gate_up + int64_t{s.intermediate_padded} * hidden, hidden));
    RETURN_IF_ERROR(write(mlp + "down_proj.weight", {hidden, inter_total}, 0, hidden, inter_row0, inter_local,
                          WeightKind::kProjection, at(o.down), s.intermediate_padded));
    layer.input_norm = at(o.input_norm);
    layer.post_attention_norm = at(o.post_norm);
    layer.qkv_proj = qkv;
    layer.o_proj = at(o.o);
    layer.gate_up_proj = gate_up;
    layer.down_proj = at(o.down);
  }
  RETURN_IF_CUDA_ERROR(cudaDeviceSynchronize());

  // Bytes of one step's weight traffic (padding included: the GEMMs read it).
  size_t bytes = size_t(hidden) * 2;  // final norm
  if (has_lm_head) bytes += size_t(s.vocab_padded) * hidden * 2;
  for (int i = 0; i < config.num_layers; ++i) {
    bytes += 2 * size_t(hidden) * 2 + size_t(s.qkv_size) * hidden * 2 + size_t(hidden) * s.q_size * 2 +
             size_t(3) * s.intermediate_padded * hidden * 2;
    if (config.attention_bias) bytes += size_t(s.qkv_size) * 2;
    if (config.qk_norm) bytes += size_t(2) * d * 2;
    if (has_o_bias) bytes += size_t(hidden) * 2;
  }
  weights->step_read_bytes_ = bytes;
  return weights;
}

}  // namespace asyncspade
