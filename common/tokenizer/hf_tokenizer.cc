#include "common/tokenizer/hf_tokenizer.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/tokenizer/json_fields.h"
#include "common/tokenizer/unicode.h"
#include "glog/logging.h"

namespace asyncspade::tokenizer {
namespace {

const nlohmann::json& FieldOrNull(const nlohmann::json& obj, const char* field) {
  static const nlohmann::json null_value;
  auto it = obj.find(field);
  return it == obj.end() ? null_value : *it;
}

// tokenizer_config.json spells special tokens as a string or as {"content": "...", ...}.
absl::StatusOr<std::optional<std::string>> ConfigTokenText(const nlohmann::json& config, const char* field) {
  const nlohmann::json& value = FieldOrNull(config, field);
  if (value.is_null()) return std::optional<std::string>();
  if (value.is_string()) return std::optional<std::string>(value.get<std::string>());
  if (value.is_object()) {
    ASSIGN_OR_RETURN(std::string content, RequiredString(value, "content", field));
    return std::optional<std::string>(content);
  }
  return absl::InvalidArgumentError(absl::StrCat("tokenizer_config.json: key '", field,
                                                 "' must be a string, {\"content\": ...} or null, found ",
                                                 value.type_name()));
}

}  // namespace

absl::StatusOr<std::unique_ptr<HfTokenizer>> HfTokenizer::Create(const nlohmann::json& tokenizer_json,
                                                                 const nlohmann::json* tokenizer_config) {
  if (!tokenizer_json.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the top level must be a JSON object, found ", tokenizer_json.type_name()));
  }
  if (!tokenizer_json.contains("model")) {
    return absl::InvalidArgumentError("key 'model' is missing; this does not look like an HF tokenizer.json");
  }
  std::unique_ptr<HfTokenizer> tok(new HfTokenizer());
  ASSIGN_OR_RETURN(tok->model_, BpeModel::FromJson(tokenizer_json["model"], "model"));
  ASSIGN_OR_RETURN(tok->normalizer_, ParseNormalizer(FieldOrNull(tokenizer_json, "normalizer"), "normalizer"));
  ASSIGN_OR_RETURN(tok->pre_tokenizer_,
                   ParsePreTokenizer(FieldOrNull(tokenizer_json, "pre_tokenizer"), "pre_tokenizer"));
  ASSIGN_OR_RETURN(tok->post_processor_,
                   ParsePostProcessor(FieldOrNull(tokenizer_json, "post_processor"), "post_processor"));
  ASSIGN_OR_RETURN(tok->decoder_, ParseDecoder(FieldOrNull(tokenizer_json, "decoder"), "decoder"));
  tok->decoder_has_byte_fallback_ = tok->decoder_ != nullptr && tok->decoder_->HasByteFallback();
  ASSIGN_OR_RETURN(tok->added_tokens_, ParseAddedTokens(FieldOrNull(tokenizer_json, "added_tokens"), "added_tokens"));

  // Ids are assigned the way HF does when it loads the file: a token already in the model keeps
  // the model's id, any other gets the next id after the model vocabulary and earlier added
  // tokens. Real files agree with this; when one does not, HF's ids win.
  int32_t max_id = tok->model_->max_id();
  const int64_t model_entries = tok->model_->vocab_entries();
  int64_t max_added = -1;
  for (size_t i = 0; i < tok->added_tokens_.size(); ++i) {
    AddedToken& token = tok->added_tokens_[i];
    int32_t declared = token.id;
    if (auto previous = tok->added_by_content_.find(token.content); previous != tok->added_by_content_.end()) {
      token.id = previous->second;
    } else if (std::optional<int32_t> model_id = tok->model_->TokenToId(token.content)) {
      token.id = *model_id;
    } else if (max_added < 0) {
      token.id = static_cast<int32_t>(model_entries);
    } else {
      token.id = static_cast<int32_t>(max_added >= model_entries || model_entries == 0 ? max_added + 1 : model_entries);
    }
    if (token.id != declared) {
      LOG(WARNING) << "tokenizer.json: added token \"" << token.content << "\" declares id " << declared
                   << " but gets id " << token.id << " (as HF tokenizers assigns it)";
    }
    max_added = std::max<int64_t>(max_added, token.id);
    tok->added_by_content_[token.content] = token.id;
    tok->added_by_id_[token.id] = i;
    max_id = std::max(max_id, token.id);
  }
  for (const AddedToken& token : tok->added_tokens_) {
    if (tok->added_by_id_[token.id] != static_cast<size_t>(&token - tok->added_tokens_.data())) continue;
    if (token.normalized && tok->normalizer_ != nullptr) {
      std::string normalized = token.content;
      tok->normalizer_->Normalize(normalized);
      tok->normalized_matcher_.Add(std::move(normalized), token);
    } else if (token.normalized) {
      tok->normalized_matcher_.Add(token.content, token);
    } else {
      tok->raw_matcher_.Add(token.content, token);
    }
  }
  tok->vocab_size_ = max_id + 1;
  tok->skipped_when_special_.assign(static_cast<size_t>(tok->vocab_size_), false);
  absl::flat_hash_map<std::string, bool> special_contents;
  for (const AddedToken& token : tok->added_tokens_) {
    if (token.special) special_contents[token.content] = true;
  }
  for (int32_t id = 0; id < tok->vocab_size_; ++id) {
    const std::string* text = tok->TokenString(id);
    if (text != nullptr && special_contents.contains(*text)) tok->skipped_when_special_[id] = true;
  }
  if (tokenizer_config != nullptr) RETURN_IF_ERROR(tok->ReadTokenizerConfig(*tokenizer_config));
  return tok;
}

absl::Status HfTokenizer::ReadTokenizerConfig(const nlohmann::json& config) {
  if (!config.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer_config.json: the top level must be a JSON object, found ", config.type_name()));
  }
  for (auto [field, target] : {std::make_pair("bos_token", &bos_token_id_), std::make_pair("eos_token", &eos_token_id_)}) {
    ASSIGN_OR_RETURN(std::optional<std::string> text, ConfigTokenText(config, field));
    if (!text) continue;
    std::optional<int32_t> id = TokenToId(*text);
    if (!id) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer_config.json: ", field, " \"", *text,
                                                     "\" is not a token of tokenizer.json"));
    }
    *target = id;
  }
  return absl::OkStatus();
}

std::vector<int32_t> HfTokenizer::Encode(absl::string_view text_in, bool add_special_tokens) const {
  std::string_view text(text_in.data(), text_in.size());
  // Rust strings are valid UTF-8 by construction; anything else is repaired the way a caller of
  // HF would have had to.
  PreTokenizedText pieces(IsValidUtf8(text) ? std::string(text) : Utf8Lossy(text));
  raw_matcher_.Split(pieces);
  if (normalizer_ != nullptr) {
    std::string scratch;
    pieces.Transform([&](std::string_view piece, bool, std::string& out) {
      scratch.assign(piece);
      normalizer_->Normalize(scratch);
      out += scratch;
    });
  }
  normalized_matcher_.Split(pieces);
  if (pre_tokenizer_ != nullptr) pre_tokenizer_->PreTokenize(pieces);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 8);
  for (const PreToken& piece : pieces.pieces()) {
    if (piece.token_id >= 0) {
      ids.push_back(piece.token_id);
    } else {
      model_->Tokenize(pieces.View(piece), ids);
    }
  }
  if (add_special_tokens && post_processor_ != nullptr) post_processor_->AddSpecialTokens(ids);
  return ids;
}

const std::string* HfTokenizer::TokenString(int32_t id) const {
  if (auto it = added_by_id_.find(id); it != added_by_id_.end()) return &added_tokens_[it->second].content;
  return model_->IdToToken(id);
}

std::string HfTokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    const std::string* text = TokenString(id);
    if (text == nullptr) continue;  // outside the vocabulary: HF drops it silently
    if (skip_special_tokens && skipped_when_special_[id]) continue;
    tokens.push_back(*text);
  }
  std::string out;
  if (decoder_ == nullptr) {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) out.push_back(' ');
      out += tokens[i];
    }
    return out;
  }
  decoder_->DecodeChain(tokens);
  for (const std::string& token : tokens) out += token;
  return out;
}

std::optional<int32_t> HfTokenizer::TokenToId(absl::string_view token_in) const {
  std::string token(token_in.data(), token_in.size());
  if (auto it = added_by_content_.find(token); it != added_by_content_.end()) return it->second;
  return model_->TokenToId(token);
}

std::optional<std::string> HfTokenizer::IdToToken(int32_t id) const {
  const std::string* text = TokenString(id);
  if (text == nullptr) return std::nullopt;
  return *text;
}

bool HfTokenizer::IsSpecial(int32_t id) const {
  auto it = added_by_id_.find(id);
  return it != added_by_id_.end() && added_tokens_[it->second].special;
}

bool HfTokenizer::TextPendingAfter(int32_t id, bool skip_special_tokens) const {
  if (!decoder_has_byte_fallback_) return false;
  // Under ByteFallback a run of <0xXX> tokens is decoded as a whole, and ids that Decode drops
  // (unknown, or skipped specials) do not end a run.
  const std::string* text = TokenString(id);
  if (text == nullptr) return true;
  if (skip_special_tokens && skipped_when_special_[id]) return true;
  return ByteFallbackValue(*text) >= 0;
}

}  // namespace asyncspade::tokenizer
