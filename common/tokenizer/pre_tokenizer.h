// Pre-tokenizers of HF tokenizer.json: Split, ByteLevel, Digits, Metaspace and Sequence. They cut
// normalized text into the words that the model tokenizes one by one.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace asyncspade::tokenizer {

// One piece of the input on its way to the model: a byte range of PreTokenizedText's buffer.
struct PreToken {
  size_t begin = 0;
  size_t end = 0;
  // Starts at byte 0 of the original input (Metaspace's prepend_scheme "first" looks at this).
  bool at_input_start = false;
  // >= 0: the piece is an added token with this id and is final (its range is unused).
  int32_t token_id = -1;
};

// The input as a list of pieces over one buffer, so that splitting copies no text. Pieces are
// never empty.
class PreTokenizedText {
 public:
  explicit PreTokenizedText(std::string text);

  const std::vector<PreToken>& pieces() const { return pieces_; }
  std::string_view View(const PreToken& piece) const {
    return std::string_view(buffer_).substr(piece.begin, piece.end - piece.begin);
  }

  // Where a splitting function puts the sub-pieces of one piece, as ranges of that piece's text.
  class Sink {
   public:
    void Add(size_t start, size_t end, int32_t token_id = -1) {
      if (start < end || token_id >= 0) out_.push_back({base_ + start, base_ + end, at_start_ && start == 0, token_id});
    }

   private:
    friend class PreTokenizedText;
    Sink(std::vector<PreToken>& out, size_t base, bool at_start) : out_(out), base_(base), at_start_(at_start) {}
    std::vector<PreToken>& out_;
    size_t base_;
    bool at_start_;
  };

  // Replaces every piece without a token id by what `split(text, sink)` adds.
  template <typename SplitFn>
  void Split(SplitFn&& split) {
    std::vector<PreToken> out;
    out.reserve(pieces_.size() * 2);
    for (const PreToken& piece : pieces_) {
      if (piece.token_id >= 0) {
        out.push_back(piece);
        continue;
      }
      Sink sink(out, piece.begin, piece.at_input_start);
      split(View(piece), sink);
    }
    pieces_ = std::move(out);
  }

  // Replaces the text of every piece without a token id by what
  // `transform(text, at_input_start, out)` appends to `out`; pieces that become empty disappear.
  template <typename TransformFn>
  void Transform(TransformFn&& transform) {
    std::string buffer;
    buffer.reserve(buffer_.size() + buffer_.size() / 4);
    std::vector<PreToken> out;
    out.reserve(pieces_.size());
    for (const PreToken& piece : pieces_) {
      if (piece.token_id >= 0) {
        out.push_back(piece);
        continue;
      }
      size_t begin = buffer.size();
      transform(View(piece), piece.at_input_start, buffer);
      if (buffer.size() > begin) out.push_back({begin, buffer.size(), piece.at_input_start, -1});
    }
    buffer_ = std::move(buffer);
    pieces_ = std::move(out);
  }

 private:
  std::string buffer_;
  std::vector<PreToken> pieces_;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void PreTokenize(PreTokenizedText& text) const = 0;
};

// Null config -> null pointer (the whole piece is one word). Unknown types are errors naming
// `path` and the type.
absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const nlohmann::json& config,
                                                                const std::string& path);

}  // namespace asyncspade::tokenizer
