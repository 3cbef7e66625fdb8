#include "common/safetensors.h"

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "common/model_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_paths.h"

namespace asyncspade {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::SharedDir;
using testing::SourceDir;
using testing::TempDir;

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Serialises a header and data section the way the safetensors format defines them: u64 LE header
// length, JSON header, raw data.
std::string SafetensorsBytes(const json& header, const std::string& data) {
  const std::string text = header.dump();
  std::string out(8, '\0');
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + text + data;
}

struct Tensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

// A well-formed file holding `tensors` back to back.
std::string MakeFile(const std::vector<Tensor>& tensors) {
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};
  std::string data;
  for (const Tensor& t : tensors) {
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  return SafetensorsBytes(header, data);
}

std::vector<float> RandomFloats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.5f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::string F32Bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}
std::string U16Bytes(const std::vector<uint16_t>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 2);
}

TEST(SafetensorsTest, ReadsF32Bf16AndF16TensorsAsFloat32) {
  TempDir dir;
  const std::vector<float> f32 = RandomFloats(12, 1);
  const std::vector<float> src16 = RandomFloats(6, 2);
  std::vector<uint16_t> bf16, f16;
  for (float x : src16) {
    bf16.push_back(FloatToBf16(x));
    f16.push_back(FloatToF16(x));
  }
  WriteBytes(dir.File("model.safetensors"), MakeFile({{"a.weight", "F32", {3, 4}, F32Bytes(f32)},
                                                      {"b.weight", "BF16", {6}, U16Bytes(bf16)},
                                                      {"c.weight", "F16", {2, 3}, U16Bytes(f16)}}));
  auto ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_THAT((*ckpt)->names(), ElementsAre("a.weight", "b.weight", "c.weight"));
  EXPECT_TRUE((*ckpt)->Has("b.weight"));
  EXPECT_FALSE((*ckpt)->Has("d.weight"));

  auto a = (*ckpt)->ReadFloat32("a.weight", {3, 4});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(*a, f32);
  auto b = (*ckpt)->ReadFloat32("b.weight", {6});
  ASSERT_TRUE(b.ok()) << b.status();
  auto c = (*ckpt)->ReadFloat32("c.weight", {2, 3});
  ASSERT_TRUE(c.ok()) << c.status();
  for (size_t i = 0; i < src16.size(); ++i) {
    EXPECT_NEAR((*b)[i], src16[i], std::fabs(src16[i]) * (1.0f / 128)) << i;   // bf16: 8-bit mantissa
    EXPECT_NEAR((*c)[i], src16[i], std::fabs(src16[i]) * (1.0f / 1024)) << i;  // f16: 11-bit mantissa
    EXPECT_EQ((*b)[i], Bf16ToFloat(bf16[i]));
    EXPECT_EQ((*c)[i], F16ToFloat(f16[i]));
  }

  auto view = (*ckpt)->Get("c.weight", {2, 3});
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ((*view)->dtype, DType::kF16);
  EXPECT_EQ((*view)->numel(), 6);
  EXPECT_EQ((*view)->nbytes, 12u);
  EXPECT_EQ((*view)->file, dir.File("model.safetensors"));
  EXPECT_EQ(std::memcmp((*view)->data, f16.data(), 12), 0);
}

TEST(SafetensorsTest, ReadsTensorsAtUnalignedOffsets) {
  TempDir dir;
  const std::vector<float> f32 = RandomFloats(5, 3);
  // A 1-byte U8 tensor first puts the F32 tensor at an odd offset in the data section.
  WriteBytes(dir.File("model.safetensors"),
             MakeFile({{"flag", "U8", {1}, std::string(1, '\x07')}, {"w", "F32", {5}, F32Bytes(f32)}}));
  auto ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto w = (*ckpt)->ReadFloat32("w", {5});
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(*w, f32);
  absl::Status not_float = (*ckpt)->ReadFloat32("flag", {1}).status();
  EXPECT_FALSE(not_float.ok());
  EXPECT_THAT(not_float.message(), HasSubstr("'flag' has dtype U8"));
}

TEST(SafetensorsTest, MissingTensorAndWrongShapeNameTheTensor) {
  TempDir dir;
  WriteBytes(dir.File("model.safetensors"), MakeFile({{"w", "F32", {2, 3}, F32Bytes(RandomFloats(6, 4))}}));
  auto ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  absl::Status missing = (*ckpt)->Get("model.norm.weight", {64}).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.message(), HasSubstr("'model.norm.weight'"));
  absl::Status shape = (*ckpt)->ReadFloat32("w", {3, 2}).status();
  EXPECT_EQ(shape.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(shape.message(), HasSubstr("'w' has shape [2, 3]"));
  EXPECT_THAT(shape.message(), HasSubstr("[3, 2]"));
  EXPECT_THAT(shape.message(), HasSubstr("model.safetensors"));
}

struct CorruptCase {
  const char* name;
  std::string bytes;
  const char* expected;
};

std::vector<CorruptCase> CorruptCases() {
  const std::string good_data = F32Bytes(RandomFloats(4, 5));
  auto header_with = [&](const json& entry) {
    json h = json::object();
    h["t"] = entry;
    return h;
  };
  std::vector<CorruptCase> cases;
  cases.push_back({"empty file", "", "too short"});
  cases.push_back({"seven bytes", std::string(7, '\0'), "too short"});
  {
    std::string bytes = SafetensorsBytes(header_with({{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {0, 16}}}),
                                         good_data);
    bytes[0] = static_cast<char>(0xff);  // header length now far beyond the file
    bytes[3] = 0x10;
    cases.push_back({"header length beyond file", bytes, "exceeds the file size"});
  }
  {
    std::string bytes = SafetensorsBytes(header_with({{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {0, 16}}}),
                                         good_data);
    cases.push_back({"truncated data", bytes.substr(0, bytes.size() - 5), "outside the data section"});
  }
  {
    std::string text = R"({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]})";  // missing }
    std::string bytes(8, '\0');
    bytes[0] = static_cast<char>(text.size());
    cases.push_back({"bad JSON", bytes + text + good_data, "not a valid JSON object"});
  }
  cases.push_back({"offsets out of range",
                   SafetensorsBytes(header_with({{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {8, 24}}}),
                                    good_data),
                   "outside the data section"});
  cases.push_back({"offsets reversed",
                   SafetensorsBytes(header_with({{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {8, 4}}}),
                                    good_data),
                   "outside the data section"});
  cases.push_back({"negative offset",
                   SafetensorsBytes(header_with({{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {-4, 12}}}),
                                    good_data),
                   "'data_offsets'"});
  cases.push_back({"dtype x shape != bytes",
                   SafetensorsBytes(header_with({{"dtype", "F32"}, {"shape", {3}}, {"data_offsets", {0, 16}}}),
                                    good_data),
                   "span 16 bytes"});
  cases.push_back({"huge shape",
                   SafetensorsBytes(header_with({{"dtype", "F32"},
                                                 {"shape", {int64_t{1} << 40, int64_t{1} << 40}},
                                                 {"data_offsets", {0, 16}}}),
                                    good_data),
                   "span 16 bytes"});
  cases.push_back({"negative dim",
                   SafetensorsBytes(header_with({{"dtype", "F32"}, {"shape", {-4}}, {"data_offsets", {0, 16}}}),
                                    good_data),
                   "invalid shape"});
  cases.push_back({"unsupported dtype",
                   SafetensorsBytes(header_with({{"dtype", "F64"}, {"shape", {2}}, {"data_offsets", {0, 16}}}),
                                    good_data),
                   "dtype 'F64'"});
  cases.push_back({"unknown dtype",
                   SafetensorsBytes(header_with({{"dtype", "Q4"}, {"shape", {2}}, {"data_offsets", {0, 16}}}),
                                    good_data),
                   "dtype 'Q4'"});
  cases.push_back({"missing dtype",
                   SafetensorsBytes(header_with({{"shape", {4}}, {"data_offsets", {0, 16}}}), good_data),
                   "no string 'dtype'"});
  {
    json h = json::object();
    h["first"] = {{"dtype", "F32"}, {"shape", {3}}, {"data_offsets", {0, 12}}};
    h["second"] = {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {8, 16}}};
    cases.push_back({"overlapping tensors", SafetensorsBytes(h, good_data), "overlap"});
  }
  cases.push_back({"header not an object", SafetensorsBytes(json::array({1, 2}), good_data), "not a valid JSON object"});
  return cases;
}

TEST(SafetensorsTest, CorruptFilesAreErrorsNamingFileAndProblem) {
  TempDir dir;
  for (const CorruptCase& c : CorruptCases()) {
    SCOPED_TRACE(c.name);
    const std::string path = dir.File("model.safetensors");
    WriteBytes(path, c.bytes);
    auto file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok());
    EXPECT_THAT(file.status().message(), HasSubstr(c.expected));
    EXPECT_THAT(file.status().message(), HasSubstr(path));
    // Through the checkpoint API the same error surfaces.
    EXPECT_FALSE(Checkpoint::Open(dir.path()).ok());
  }
}

TEST(SafetensorsTest, EmptyTensorsMayShareOffsets) {
  TempDir dir;
  json h = json::object();
  h["empty"] = {{"dtype", "F32"}, {"shape", {0, 4}}, {"data_offsets", {4, 4}}};
  h["full"] = {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}};
  WriteBytes(dir.File("model.safetensors"), SafetensorsBytes(h, F32Bytes(RandomFloats(2, 6))));
  auto ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto empty = (*ckpt)->ReadFloat32("empty", {0, 4});
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->empty());
}

TEST(SafetensorsTest, ShardedCheckpointFollowsTheIndex) {
  TempDir dir;
  const std::vector<float> a = RandomFloats(4, 7), b = RandomFloats(6, 8), c = RandomFloats(3, 9);
  WriteBytes(dir.File("model-00001-of-00002.safetensors"),
             MakeFile({{"a", "F32", {4}, F32Bytes(a)}, {"b", "F32", {2, 3}, F32Bytes(b)}}));
  WriteBytes(dir.File("model-00002-of-00002.safetensors"), MakeFile({{"c", "F32", {3}, F32Bytes(c)}}));
  json index = {{"metadata", {{"total_size", 52}}},
                {"weight_map",
                 {{"a", "model-00001-of-00002.safetensors"},
                  {"b", "model-00001-of-00002.safetensors"},
                  {"c", "model-00002-of-00002.safetensors"}}}};
  WriteBytes(dir.File("model.safetensors.index.json"), index.dump());
  auto ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_THAT((*ckpt)->names(), ElementsAre("a", "b", "c"));
  EXPECT_EQ(*(*ckpt)->ReadFloat32("a", {4}), a);
  EXPECT_EQ(*(*ckpt)->ReadFloat32("b", {2, 3}), b);
  EXPECT_EQ(*(*ckpt)->ReadFloat32("c", {3}), c);
  auto view = (*ckpt)->Get("c", {3});
  ASSERT_TRUE(view.ok());
  EXPECT_THAT((*view)->file, HasSubstr("model-00002-of-00002.safetensors"));
}

TEST(SafetensorsTest, BadIndexesAreClearErrors) {
  struct IndexCase {
    const char* name;
    std::string index;
    const char* expected;
  };
  const IndexCase cases[] = {
      {"missing shard", R"({"weight_map": {"a": "shard1.safetensors", "c": "shard-gone.safetensors"}})",
       "shard-gone.safetensors"},
      {"tensor not in its shard", R"({"weight_map": {"a": "shard1.safetensors", "zz": "shard1.safetensors"}})",
       "'zz'"},
      {"not JSON", R"({"weight_map": )", "not valid JSON"},
      {"no weight_map", R"({"metadata": {}})", "'weight_map'"},
      {"shard outside dir", R"({"weight_map": {"a": "../shard1.safetensors"}})", "not a file inside"},
      {"shard not a string", R"({"weight_map": {"a": 3}})", "must be a shard file name"},
  };
  for (const IndexCase& c : cases) {
    SCOPED_TRACE(c.name);
    TempDir dir;
    WriteBytes(dir.File("shard1.safetensors"), MakeFile({{"a", "F32", {2}, F32Bytes(RandomFloats(2, 10))}}));
    WriteBytes(dir.File("model.safetensors.index.json"), c.index);
    auto ckpt = Checkpoint::Open(dir.path());
    ASSERT_FALSE(ckpt.ok());
    EXPECT_THAT(ckpt.status().message(), HasSubstr(c.expected));
  }
}

TEST(SafetensorsTest, DirectoryWithoutWeightsIsNotFound) {
  TempDir dir;
  absl::Status status = Checkpoint::Open(dir.path()).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("model.safetensors"));
  EXPECT_EQ(Checkpoint::Open(dir.File("nope")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(SafetensorsFile::Open(dir.File("nope.safetensors")).status().code(), absl::StatusCode::kNotFound);
}

TEST(SafetensorsTest, OpensStories260K) {
  const std::string dir = SharedDir() + "/models/stories260K";
  if (!fs::exists(dir + "/model.safetensors")) GTEST_SKIP() << dir << " is absent (set ASYNCSPADE_SHARED_DIR)";
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->names().size(), 47u);  // SOURCE.md: 47 F32 tensors
  auto emb = (*ckpt)->ReadFloat32("model.embed_tokens.weight", {512, 64});
  ASSERT_TRUE(emb.ok()) << emb.status();
  double sum_sq = 0;
  for (float v : *emb) sum_sq += double{v} * v;
  EXPECT_GT(sum_sq, 0.0);
  EXPECT_TRUE((*ckpt)->Get("model.layers.4.self_attn.k_proj.weight", {32, 64}).ok());
}

// Every tensor a config implies is present with the implied shape in each committed fixture (the
// single-file f32, bf16 and sharded layouts written by transformers' save_pretrained).
TEST(SafetensorsTest, OpensEveryTransformersFixture) {
  const fs::path root = fs::path(SourceDir()) / "tests/fixtures/transformers";
  if (!fs::exists(root)) GTEST_SKIP() << root << " is absent";
  int checked = 0;
  for (const auto& entry : fs::directory_iterator(root)) {
    const fs::path model_dir = entry.path() / "model";
    if (!fs::exists(model_dir / "config.json")) continue;
    SCOPED_TRACE(model_dir.string());
    auto config = LoadModelConfig(model_dir.string());
    ASSERT_TRUE(config.ok()) << config.status();
    auto ckpt = Checkpoint::Open(model_dir.string());
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    const int64_t h = config->hidden_size, q = config->q_size(), kv = config->kv_size(),
                  ff = config->intermediate_size;
    size_t expected_count = 2 + (config->tie_word_embeddings ? 0 : 1);
    EXPECT_TRUE((*ckpt)->ReadFloat32("model.embed_tokens.weight", {config->vocab_size, h}).ok());
    EXPECT_TRUE((*ckpt)->ReadFloat32("model.norm.weight", {h}).ok());
    EXPECT_EQ((*ckpt)->Has("lm_head.weight"), !config->tie_word_embeddings);
    for (int l = 0; l < config->num_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      std::vector<std::pair<std::string, std::vector<int64_t>>> expected = {
          {"input_layernorm.weight", {h}},        {"post_attention_layernorm.weight", {h}},
          {"self_attn.q_proj.weight", {q, h}},   {"self_attn.k_proj.weight", {kv, h}},
          {"self_attn.v_proj.weight", {kv, h}},  {"self_attn.o_proj.weight", {h, q}},
          {"mlp.gate_proj.weight", {ff, h}},     {"mlp.up_proj.weight", {ff, h}},
          {"mlp.down_proj.weight", {h, ff}}};
      if (config->attention_bias) {
        expected.push_back({"self_attn.q_proj.bias", {q}});
        expected.push_back({"self_attn.k_proj.bias", {kv}});
        expected.push_back({"self_attn.v_proj.bias", {kv}});
      }
      if (config->qk_norm) {
        expected.push_back({"self_attn.q_norm.weight", {config->head_dim}});
        expected.push_back({"self_attn.k_norm.weight", {config->head_dim}});
      }
      for (const auto& [name, shape] : expected) {
        auto values = (*ckpt)->ReadFloat32(p + name, shape);
        ASSERT_TRUE(values.ok()) << values.status();
        bool all_zero = true;
        for (float v : *values) all_zero = all_zero && v == 0.0f;
        EXPECT_FALSE(all_zero) << p + name;  // the generator randomises every weight
      }
      expected_count += expected.size();
    }
    EXPECT_EQ((*ckpt)->names().size(), expected_count);
    ++checked;
  }
  if (checked == 0) GTEST_SKIP() << "no fixtures under " << root;
}

}  // namespace
}  // namespace asyncspade
