#include "kernels/embedding.h"

#include <gtest/gtest.h>

#include "tests/unit/kernels/kernel_test_util.h"

namespace asyncspade::kernels {
namespace {

TEST(EmbeddingTest, CopiesTheRowOfEachId) {
  for (auto [vocab, hidden, n] : {std::tuple{7, 3, 5}, std::tuple{512, 64, 33}, std::tuple{1000, 129, 1}}) {
    const std::vector<float> table = testing::RandomFloats(size_t(vocab) * hidden, 1);
    std::vector<int32_t> ids = testing::RandomIds(n, vocab, 2);
    ids[0] = vocab - 1;  // the last row is reachable
    std::vector<float> out(size_t(n) * hidden, 0.0f);
    cpu::Embedding(ids.data(), n, table.data(), hidden, out.data());
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < hidden; ++j) {
        ASSERT_EQ(out[size_t(i) * hidden + j], table[size_t(ids[i]) * hidden + j]) << i << "," << j;
      }
    }
  }
}

}  // namespace
}  // namespace asyncspade::kernels
