// HF `tokenizer.json` tokenizers: byte-level BPE (Qwen2/Qwen3, Llama-3, SmolLM2, GPT-2 family) and
// SentencePiece-style BPE with byte fallback (Llama-2, TinyLlama, stories260K). Added/special tokens
// are matched whole in the raw text before normalization and pre-tokenization.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "nlohmann/json_fwd.hpp"

namespace asyncspade {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Loads `tokenizer.json`. Unsupported models/normalizers/pre-tokenizers/decoders are errors
  // naming the JSON key.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& tokenizer_json_path);
  // Loads `<dir>/tokenizer.json` and, when present, `<dir>/tokenizer_config.json` (bos/eos tokens;
  // whether BOS is added is the post-processor's business, as in HF `tokenizers`). The chat
  // template is read by ChatTemplate::FromModelDir.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromModelDir(const std::string& model_dir);
  // Builds a tokenizer from already parsed tokenizer.json contents (e.g. converted from a GGUF
  // file); `tokenizer_config` may be null. Errors name the JSON key.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(const nlohmann::json& tokenizer_json,
                                                             const nlohmann::json* tokenizer_config);

  // `add_special_tokens` applies the post-processor (e.g. Llama's BOS); added tokens in `text` are
  // always matched.
  virtual std::vector<int32_t> Encode(absl::string_view text, bool add_special_tokens) const = 0;
  // Ids outside the vocabulary are dropped (as HF does). Invalid UTF-8 in the joined bytes is
  // replaced by U+FFFD per maximal invalid subpart.
  virtual std::string Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const = 0;
  virtual int vocab_size() const = 0;  // largest id + 1, added tokens included
  virtual std::optional<int32_t> TokenToId(absl::string_view token) const = 0;
  virtual std::optional<std::string> IdToToken(int32_t id) const = 0;
  virtual bool IsSpecial(int32_t id) const = 0;

  // From tokenizer_config.json (absent: nullopt / false).
  virtual std::optional<int32_t> bos_token_id() const = 0;
  virtual std::optional<int32_t> eos_token_id() const = 0;

  // For IncrementalDetokenizer: true when the text of a sequence ending in `id` may still change
  // once more ids follow, beyond completing a split UTF-8 character (under a ByteFallback decoder
  // a run of <0xXX> tokens is decoded as a whole).
  virtual bool TextPendingAfter(int32_t id, bool skip_special_tokens) const { return false; }
};

// Streams text for a growing list of ids. Emits only complete UTF-8 characters: bytes of a
// character split across tokens are held back until it completes (or flushed as U+FFFD at the end).
// Its output concatenated equals Decode(all ids) for the same skip_special_tokens. Each Push decodes
// only the ids since the last emitted text, so streaming costs O(1) per token.
class IncrementalDetokenizer {
 public:
  IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens);
  // Returns the new text that `id` completes (possibly empty).
  std::string Push(int32_t id);
  // Returns whatever is held back (invalid/incomplete bytes become U+FFFD). Afterwards the
  // detokenizer starts a new text.
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  // The ids since the last emission point: the first `prefix_ids_` of them produced text that has
  // already been emitted (`prefix_text_` is their decoding on their own), the rest are pending.
  std::vector<int32_t> ids_;
  size_t prefix_ids_ = 0;
  std::string prefix_text_;
};

}  // namespace asyncspade
