#include "services/decode_worker/service/active_request.h"

#include <utility>

namespace asyncspade {

void ActiveRequest::Append(int32_t token_id, const std::string& text) {
  absl::MutexLock lock(&mutex_);
  pending_tokens_.push_back(token_id);
  pending_text_ += text;
}

void ActiveRequest::AppendText(const std::string& text) {
  if (text.empty()) return;
  absl::MutexLock lock(&mutex_);
  pending_text_ += text;
}

void ActiveRequest::Finish(serving::v1::GenerateFinal final) {
  absl::MutexLock lock(&mutex_);
  if (!final_.has_value()) final_ = std::move(final);
}

bool ActiveRequest::finished() const {
  absl::MutexLock lock(&mutex_);
  return final_.has_value();
}

ActiveRequest::Output ActiveRequest::Take(absl::Duration timeout) {
  absl::MutexLock lock(&mutex_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return !pending_tokens_.empty() || !pending_text_.empty() || (final_.has_value() && !final_taken_);
  };
  mutex_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  Output out;
  out.token_ids = std::move(pending_tokens_);
  pending_tokens_.clear();
  const bool ending = final_.has_value() && !final_taken_;
  // Text is written in whole UTF-8 characters; the rest waits for the next token (or the end).
  const size_t complete = ending ? pending_text_.size() : CompleteUtf8Prefix(pending_text_);
  out.text = pending_text_.substr(0, complete);
  pending_text_.erase(0, complete);
  if (ending) {
    out.final = *final_;
    final_taken_ = true;
  }
  return out;
}

size_t CompleteUtf8Prefix(const std::string& text) {
  const size_t n = text.size();
  // A character is at most 4 bytes: only the last 3 bytes can start an unfinished one.
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const auto byte = static_cast<unsigned char>(text[n - back]);
    if ((byte & 0xC0) == 0x80) continue;  // continuation byte: look further back
    size_t length = 1;
    if ((byte & 0xE0) == 0xC0) {
      length = 2;
    } else if ((byte & 0xF0) == 0xE0) {
      length = 3;
    } else if ((byte & 0xF8) == 0xF0) {
      length = 4;
    }
    return length > back ? n - back : n;
  }
  return n;
}

}  // namespace asyncspade
