#include "services/decode_worker/engine/stop_string_matcher.h"

#include <algorithm>

namespace asyncspade {

StopStringMatcher::StopStringMatcher(std::vector<std::string> stop_strings)
    : stop_strings_(std::move(stop_strings)) {
  // An empty stop string would match before any text: it cannot mean anything useful.
  std::erase_if(stop_strings_, [](const std::string& s) { return s.empty(); });
}

StopStringMatcher::Result StopStringMatcher::Push(const std::string& text, bool final) {
  Result result;
  if (stopped_) {
    result.stopped = true;
    return result;
  }
  pending_ += text;
  // Everything before `pending_` was shown and had no stop string, nor the start of one at its
  // end, so a match can only begin inside `pending_`.
  size_t earliest = std::string::npos;
  for (const std::string& stop : stop_strings_) {
    earliest = std::min(earliest, pending_.find(stop));
  }
  if (earliest != std::string::npos) {
    result.visible = pending_.substr(0, earliest);
    result.stopped = true;
    stopped_ = true;
    pending_.clear();
    return result;
  }
  size_t hold = 0;
  if (!final) {
    // The longest suffix of pending_ that is a proper prefix of some stop string.
    for (const std::string& stop : stop_strings_) {
      const size_t max_len = std::min(stop.size() - 1, pending_.size());
      for (size_t len = max_len; len > hold; --len) {
        if (pending_.compare(pending_.size() - len, len, stop, 0, len) == 0) {
          hold = len;
          break;
        }
      }
    }
  }
  result.visible = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return result;
}

}  // namespace asyncspade
