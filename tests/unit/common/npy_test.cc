#include "common/npy.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_paths.h"

namespace asyncspade {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::SourceDir;
using testing::TempDir;

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A .npy file as NumPy would write it, with an arbitrary header dict and payload.
std::string NpyBytes(const std::string& dict, const std::string& payload, int major = 1) {
  std::string header = dict;
  const size_t prefix = major == 1 ? 10 : 12;
  header.append((64 - (prefix + header.size() + 1) % 64) % 64, ' ');
  header.push_back('\n');
  std::string out = std::string("\x93NUMPY", 6) + static_cast<char>(major) + '\0';
  for (size_t i = 0; i < prefix - 8; ++i) out.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xff));
  return out + header + payload;
}

TEST(NpyTest, Float32RoundTripKeepsShapeAndValues) {
  TempDir dir;
  std::mt19937 rng(11);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<float> values(3 * 5 * 2);
  for (float& v : values) v = dist(rng);
  const std::string path = dir.File("x.npy");
  ASSERT_TRUE(WriteNpy(path, values, {3, 5, 2}).ok());

  const std::string bytes = ReadBytes(path);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  EXPECT_THAT(bytes, HasSubstr("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 5, 2), }"));
  EXPECT_EQ((bytes.size() - values.size() * 4) % 64, 0u);  // data starts 64-byte aligned

  auto read = ReadNpyFloat32(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_THAT(read->shape, ElementsAre(3, 5, 2));
  EXPECT_EQ(read->numel(), 30);
  EXPECT_EQ(read->data, values);
}

TEST(NpyTest, Int32RoundTripIncludingOneDimensionalAndScalar) {
  TempDir dir;
  const std::vector<int32_t> ids = {7, -3, 151643, 0, 42};
  ASSERT_TRUE(WriteNpy(dir.File("ids.npy"), ids, {5}).ok());
  EXPECT_THAT(ReadBytes(dir.File("ids.npy")), HasSubstr("'shape': (5,), }"));
  auto read = ReadNpyInt32(dir.File("ids.npy"));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_THAT(read->shape, ElementsAre(5));
  EXPECT_EQ(read->data, ids);

  const std::vector<int32_t> scalar = {-9};
  ASSERT_TRUE(WriteNpy(dir.File("s.npy"), scalar, {}).ok());
  auto s = ReadNpyInt32(dir.File("s.npy"));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->shape.empty());
  EXPECT_THAT(s->data, ElementsAre(-9));
}

TEST(NpyTest, WriteRejectsShapeThatDoesNotMatchTheData) {
  TempDir dir;
  const std::vector<float> values = {1.5f, 2.5f, 3.5f};
  absl::Status status = WriteNpy(dir.File("x.npy"), values, {2, 2});
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("4 elements but 3"));
}

TEST(NpyTest, ReadsNumpyVariants) {
  TempDir dir;
  // int64 (NumPy's default integer), version 2.0 header, double-quoted keys in another order.
  const std::vector<int64_t> wide = {5, -6, 2147483647};
  WriteBytes(dir.File("i8.npy"),
             NpyBytes("{\"shape\": (1, 3), \"fortran_order\": False, \"descr\": \"<i8\"}",
                      std::string(reinterpret_cast<const char*>(wide.data()), 24), 2));
  auto i8 = ReadNpyInt32(dir.File("i8.npy"));
  ASSERT_TRUE(i8.ok()) << i8.status();
  EXPECT_THAT(i8->shape, ElementsAre(1, 3));
  EXPECT_THAT(i8->data, ElementsAre(5, -6, 2147483647));

  const std::vector<double> doubles = {0.25, -1.75};
  WriteBytes(dir.File("f8.npy"), NpyBytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
                                          std::string(reinterpret_cast<const char*>(doubles.data()), 16)));
  auto f8 = ReadNpyFloat32(dir.File("f8.npy"));
  ASSERT_TRUE(f8.ok()) << f8.status();
  EXPECT_THAT(f8->data, ElementsAre(0.25f, -1.75f));
}

TEST(NpyTest, BadFilesAreClearErrors) {
  TempDir dir;
  const std::string four_floats(16, '\x01');
  struct BadCase {
    const char* name;
    std::string bytes;
    const char* expected;
  };
  const int64_t too_big = int64_t{1} << 40;
  const BadCase cases[] = {
      {"not npy", "hello world, this is text", "magic"},
      {"truncated payload", NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", four_floats),
       "truncated"},
      {"extra payload", NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", four_floats),
       "needs 12 bytes"},
      {"big endian", NpyBytes("{'descr': '>f4', 'fortran_order': False, 'shape': (4,), }", four_floats), "'>f4'"},
      {"int as float", NpyBytes("{'descr': '<i4', 'fortran_order': False, 'shape': (4,), }", four_floats),
       "'<i4'"},
      {"fortran", NpyBytes("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", four_floats), "Fortran"},
      {"no shape", NpyBytes("{'descr': '<f4', 'fortran_order': False, }", four_floats), "'shape'"},
      {"bad dim", NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }", four_floats),
       "invalid dimension"},
      {"huge shape",
       NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(too_big) + ", " +
                    std::to_string(too_big) + "), }",
                four_floats),
       "truncated"},
      {"header past end", std::string("\x93NUMPY\x01\x00\xff\x7f{'descr'", 18), "header length"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = dir.File("bad.npy");
    WriteBytes(path, c.bytes);
    absl::Status status = ReadNpyFloat32(path).status();
    EXPECT_FALSE(status.ok());
    EXPECT_THAT(status.message(), HasSubstr(c.expected));
    EXPECT_THAT(status.message(), HasSubstr(path));
  }
  EXPECT_EQ(ReadNpyFloat32(dir.File("missing.npy")).status().code(), absl::StatusCode::kNotFound);

  const std::vector<int64_t> overflow = {int64_t{1} << 33};
  WriteBytes(dir.File("overflow.npy"), NpyBytes("{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }",
                                                std::string(reinterpret_cast<const char*>(overflow.data()), 8)));
  EXPECT_THAT(ReadNpyInt32(dir.File("overflow.npy")).status().message(), HasSubstr("does not fit in int32"));
}

// The fixtures' logits were written by numpy.save: each must read back with the documented shape.
TEST(NpyTest, ReadsTheTransformersFixtureLogits) {
  const fs::path root = fs::path(SourceDir()) / "tests/fixtures/transformers";
  if (!fs::exists(root)) GTEST_SKIP() << root << " is absent";
  int checked = 0;
  for (const auto& entry : fs::directory_iterator(root)) {
    const fs::path fixture_path = entry.path() / "fixture.json";
    if (!fs::exists(fixture_path)) continue;
    nlohmann::json fixture = nlohmann::json::parse(std::ifstream(fixture_path));
    for (const auto& prompt : fixture.at("prompts")) {
      const std::string path = (entry.path() / prompt.at("logits").get<std::string>()).string();
      SCOPED_TRACE(path);
      auto logits = ReadNpyFloat32(path);
      ASSERT_TRUE(logits.ok()) << logits.status();
      ASSERT_EQ(logits->shape.size(), 2u);
      EXPECT_EQ(logits->shape[0], static_cast<int64_t>(prompt.at("ids").size()));
      EXPECT_EQ(logits->shape[1], fixture.at("expected_config").at("vocab_size").get<int64_t>());
      // The last row's argmax is the first greedy token (the generator checked the same).
      const int64_t vocab = logits->shape[1];
      const float* last = logits->data.data() + (logits->shape[0] - 1) * vocab;
      const int64_t argmax = std::max_element(last, last + vocab) - last;
      EXPECT_EQ(argmax, prompt.at("greedy").at("ids").at(0).get<int64_t>());
      ++checked;
    }
  }
  if (checked == 0) GTEST_SKIP() << "no fixtures under " << root;
}

}  // namespace
}  // namespace asyncspade
