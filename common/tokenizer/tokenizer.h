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

namespace asyncspade {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Loads `tokenizer.json`. Unsupported models/normalizers/pre-tokenizers/decoders are errors
  // naming the JSON key.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& tokenizer_json_path);
  // Loads `<dir>/tokenizer.json` and, when present, `<dir>/tokenizer_config.json` (bos/eos tokens,
  // add_bos_token, chat template).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromModelDir(const std::string& model_dir);

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
};

// Streams text for a growing list of ids. Emits only complete UTF-8 characters: bytes of a
// character split across tokens are held back until it completes (or flushed as U+FFFD at the end).
// Its output concatenated equals Decode(all ids) for the same skip_special_tokens.
class IncrementalDetokenizer {
 public:
  IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens);
  // Returns the new text that `id` completes (possibly empty).
  std::string Push(int32_t id);
  // Returns whatever is held back (invalid/incomplete bytes become U+FFFD).
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  std::vector<int32_t> ids_;  // ids not yet settled (implementation may choose its own state)
};

}  // namespace asyncspade
