// "Did you mean ...?" for configuration keys and enum values: a typo must be reported, and the
// report should point at what the operator most likely meant.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace asyncspade {

// The candidate closest to `name` by edit distance (adjacent transpositions count as one edit,
// case and '-' vs '_' are ignored), when it is close enough to be a plausible typo: at most 2
// edits, or a third of the name's length for long names. nullopt when nothing is that close.
std::optional<std::string> ClosestName(std::string_view name, const std::vector<std::string>& candidates);

// " (did you mean 'blocks'?)" or "" — ready to append to an error message.
std::string DidYouMean(std::string_view name, const std::vector<std::string>& candidates);

// "a, b or c": the accepted values, for error messages.
std::string JoinAlternatives(const std::vector<std::string>& names);

}  // namespace asyncspade
