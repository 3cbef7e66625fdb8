// What one Generate stream shares between its gRPC handler thread (which writes the stream) and the
// engine loop thread (which produces tokens): new tokens and text not yet written, and, once the
// request ends, its final message.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "asyncspade/serving/v1/generation.pb.h"
#include "services/decode_worker/service/request_translator.h"

namespace asyncspade {

class ActiveRequest {
 public:
  // What the handler takes each time it wakes up.
  struct Output {
    std::vector<int32_t> token_ids;
    std::string text;
    std::optional<serving::v1::GenerateFinal> final;  // set once, when the request ended
  };

  ActiveRequest(std::string request_id, int64_t engine_id, TranslatedRequest translated, absl::Time accepted)
      : request_id_(std::move(request_id)),
        engine_id_(engine_id),
        translated_(std::move(translated)),
        accepted_(accepted) {}

  const std::string& request_id() const { return request_id_; }
  int64_t engine_id() const { return engine_id_; }
  const TranslatedRequest& translated() const { return translated_; }
  absl::Time accepted() const { return accepted_; }

  // Engine loop side.
  void Append(int32_t token_id, const std::string& text);
  void AppendText(const std::string& text);
  void Finish(serving::v1::GenerateFinal final);
  bool finished() const;

  // Handler side: waits up to `timeout` for output; returns what arrived (possibly nothing).
  Output Take(absl::Duration timeout);

  // Bookkeeping of the engine loop thread only (no lock: one thread touches it).
  struct LoopState {
    std::optional<absl::Time> scheduled;  // first admitted into a step
    std::optional<absl::Time> first_token;
    absl::Time last_token;
    std::vector<int32_t> generated;
    std::string streamed_text;
    bool abort_requested = false;
    std::string abort_reason;  // why the worker aborted it (shutdown, step failure), if it did
  };
  LoopState& loop_state() { return loop_state_; }
  const LoopState& loop_state() const { return loop_state_; }

 private:
  const std::string request_id_;
  const int64_t engine_id_;
  const TranslatedRequest translated_;
  const absl::Time accepted_;

  mutable absl::Mutex mutex_;
  std::vector<int32_t> pending_tokens_ ABSL_GUARDED_BY(mutex_);
  std::string pending_text_ ABSL_GUARDED_BY(mutex_);
  std::optional<serving::v1::GenerateFinal> final_ ABSL_GUARDED_BY(mutex_);
  bool final_taken_ ABSL_GUARDED_BY(mutex_) = false;

  LoopState loop_state_;
};

// The longest prefix of `text` that does not end inside a UTF-8 character: a lead byte whose
// continuation bytes have not all arrived is held back. Invalid bytes are not held back.
size_t CompleteUtf8Prefix(const std::string& text);

}  // namespace asyncspade
