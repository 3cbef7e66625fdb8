// The Tokenizer behind Tokenizer::FromFile / FromModelDir: HF tokenizer.json's pipeline of added
// tokens, normalizer, pre-tokenizer, BPE model, post-processor and decoder.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/tokenizer/added_vocabulary.h"
#include "common/tokenizer/bpe_model.h"
#include "common/tokenizer/decoder.h"
#include "common/tokenizer/normalizer.h"
#include "common/tokenizer/post_processor.h"
#include "common/tokenizer/pre_tokenizer.h"
#include "common/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace asyncspade::tokenizer {

class HfTokenizer : public Tokenizer {
 public:
  // `tokenizer_config` may be null (no bos/eos information).
  static absl::StatusOr<std::unique_ptr<HfTokenizer>> Create(const nlohmann::json& tokenizer_json,
                                                             const nlohmann::json* tokenizer_config);

  std::vector<int32_t> Encode(absl::string_view text, bool add_special_tokens) const override;
  std::string Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const override;
  int vocab_size() const override { return vocab_size_; }
  std::optional<int32_t> TokenToId(absl::string_view token) const override;
  std::optional<std::string> IdToToken(int32_t id) const override;
  bool IsSpecial(int32_t id) const override;
  std::optional<int32_t> bos_token_id() const override { return bos_token_id_; }
  std::optional<int32_t> eos_token_id() const override { return eos_token_id_; }
  bool TextPendingAfter(int32_t id, bool skip_special_tokens) const override;

 private:
  HfTokenizer() = default;
  const std::string* TokenString(int32_t id) const;
  absl::Status ReadTokenizerConfig(const nlohmann::json& config);

  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<PostProcessor> post_processor_;
  std::unique_ptr<Decoder> decoder_;
  bool decoder_has_byte_fallback_ = false;

  std::vector<AddedToken> added_tokens_;
  absl::flat_hash_map<std::string, int32_t> added_by_content_;
  absl::flat_hash_map<int32_t, size_t> added_by_id_;  // index into added_tokens_
  AddedTokenMatcher raw_matcher_;
  AddedTokenMatcher normalized_matcher_;
  // Decode(skip_special_tokens=true) drops an id whose token string is a special added token.
  std::vector<bool> skipped_when_special_;
  int vocab_size_ = 0;
  std::optional<int32_t> bos_token_id_;
  std::optional<int32_t> eos_token_id_;
};

}  // namespace asyncspade::tokenizer
