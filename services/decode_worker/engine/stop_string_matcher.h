// Streams generated text while watching for stop strings: text that could still turn out to be
// the start of a stop string is held back, and the stop string itself (and whatever follows it)
// is never shown.
#pragma once

#include <string>
#include <vector>

namespace asyncspade {

class StopStringMatcher {
 public:
  explicit StopStringMatcher(std::vector<std::string> stop_strings);

  struct Result {
    std::string visible;  // text that is now safe to show
    bool stopped = false;  // a stop string was found; `visible` ends right before it
  };
  // Adds new text. With `final`, nothing is held back any more (end of generation).
  Result Push(const std::string& text, bool final);

 private:
  std::vector<std::string> stop_strings_;
  std::string pending_;  // received but not yet shown
  bool stopped_ = false;
};

}  // namespace asyncspade
