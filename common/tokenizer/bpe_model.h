// The BPE model of HF tokenizer.json: vocabulary, ranked merges, byte fallback, unk handling and
// ignore_merges. Words are merged with HF's algorithm (lowest-rank pair first, leftmost on ties),
// and merged words are cached, since real text repeats its words.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"

namespace asyncspade::tokenizer {

class BpeModel {
 public:
  // `config` is tokenizer.json's "model" object (at JSON path `path`).
  static absl::StatusOr<std::unique_ptr<BpeModel>> FromJson(const nlohmann::json& config, const std::string& path);

  // Appends the ids of one pre-tokenized word.
  void Tokenize(std::string_view word, std::vector<int32_t>& ids) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // The vocabulary string of `id`, or null when the model has no such id.
  const std::string* IdToToken(int32_t id) const;
  int32_t max_id() const { return static_cast<int32_t>(id_to_token_.size()) - 1; }
  int64_t vocab_entries() const { return static_cast<int64_t>(vocab_.size()); }
  bool byte_fallback() const { return byte_fallback_; }

 private:
  BpeModel() = default;
  void MergeWord(std::string_view word, std::vector<int32_t>& ids) const;
  template <typename SymbolId>
  void MergeShortWord(size_t n, SymbolId&& symbol_id, std::vector<int32_t>& ids) const;
  int32_t CharId(char32_t c) const {
    if (c < kDirectCharIds) return small_char_ids_[c];
    auto it = char_to_id_.find(c);
    return it == char_to_id_.end() ? -1 : it->second;
  }

  struct MergeTarget {
    int32_t rank;
    int32_t merged_id;
  };
  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }
  const MergeTarget* FindMerge(int32_t left, int32_t right) const {
    auto it = merges_.find(PairKey(left, right));
    return it == merges_.end() ? nullptr : &it->second;
  }
  static constexpr size_t kLinearScanLimit = 64;
  static constexpr char32_t kDirectCharIds = 0x3000;  // Latin, Greek, Cyrillic, ..., and the byte alphabet

  absl::flat_hash_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  // Single-character tokens, a word's initial symbols: a table for small code points, a map beyond.
  std::vector<int32_t> small_char_ids_;
  absl::flat_hash_map<char32_t, int32_t> char_to_id_;
  absl::flat_hash_map<uint64_t, MergeTarget> merges_;
  int32_t byte_token_ids_[256];  // <0xXX> tokens for byte fallback, -1 when absent
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  bool fuse_unk_ = false;
  std::optional<int32_t> unk_id_;

  static constexpr size_t kMaxCachedWordBytes = 256;
  static constexpr size_t kMaxCacheEntries = 1 << 18;
  mutable absl::Mutex cache_mutex_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_ ABSL_GUARDED_BY(cache_mutex_);
};

}  // namespace asyncspade::tokenizer
