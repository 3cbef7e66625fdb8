#include "common/tokenizer/bpe_model.h"

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/tokenizer/json_fields.h"
#include "common/tokenizer/unicode.h"
#include "glog/logging.h"

namespace asyncspade::tokenizer {
namespace {

// Debian's abseil has its own string_view; its hash maps look up std::string keys by that type.
absl::string_view AbslView(std::string_view text) { return absl::string_view(text.data(), text.size()); }

absl::Status Unsupported(const std::string& key, std::string_view what) {
  return absl::UnimplementedError(absl::StrCat("key '", key, "': ", std::string(what)));
}

// A merge entry is "left right" (exactly one space) or ["left", "right"].
absl::StatusOr<std::pair<std::string, std::string>> ParseMerge(const nlohmann::json& entry, const std::string& path) {
  if (entry.is_string()) {
    const std::string& line = entry.get_ref<const std::string&>();
    size_t space = line.find(' ');
    if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("key '", path, "': merge \"", line,
                                                     "\" must be two tokens separated by one space"));
    }
    return std::make_pair(line.substr(0, space), line.substr(space + 1));
  }
  if (entry.is_array() && entry.size() == 2 && entry[0].is_string() && entry[1].is_string()) {
    return std::make_pair(entry[0].get<std::string>(), entry[1].get<std::string>());
  }
  return absl::InvalidArgumentError(
      absl::StrCat("key '", path, "': a merge must be \"left right\" or [\"left\", \"right\"], found ", entry.dump()));
}

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const nlohmann::json& config, const std::string& path) {
  if (!config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("key '", path, "' must be an object, found ", config.type_name()));
  }
  // Files written by old versions of `tokenizers` may omit the type of a BPE model.
  std::string type = "BPE";
  if (config.contains("type")) {
    ASSIGN_OR_RETURN(type, RequiredString(config, "type", path));
  } else if (!config.contains("merges")) {
    return absl::InvalidArgumentError(absl::StrCat("key '", JsonPath(path, "type"), "' is missing"));
  }
  if (type != "BPE") {
    return Unsupported(JsonPath(path, "type"), absl::StrCat("unsupported model type '", type,
                                                            "' (only BPE models are supported)"));
  }
  ASSIGN_OR_RETURN(std::optional<std::string> prefix, OptionalString(config, "continuing_subword_prefix", path));
  if (prefix && !prefix->empty()) {
    return Unsupported(JsonPath(path, "continuing_subword_prefix"),
                       absl::StrCat("continuing_subword_prefix \"", *prefix, "\" is not supported"));
  }
  ASSIGN_OR_RETURN(std::optional<std::string> suffix, OptionalString(config, "end_of_word_suffix", path));
  if (suffix && !suffix->empty()) {
    return Unsupported(JsonPath(path, "end_of_word_suffix"),
                       absl::StrCat("end_of_word_suffix \"", *suffix, "\" is not supported"));
  }
  if (auto it = config.find("dropout"); it != config.end() && !it->is_null()) {
    if (!it->is_number() || it->get<double>() != 0.0) {
      return Unsupported(JsonPath(path, "dropout"), "BPE dropout is a training feature and is not supported");
    }
  }

  std::unique_ptr<BpeModel> model(new BpeModel());
  ASSIGN_OR_RETURN(model->byte_fallback_, OptionalBool(config, "byte_fallback", path, false));
  ASSIGN_OR_RETURN(model->ignore_merges_, OptionalBool(config, "ignore_merges", path, false));
  ASSIGN_OR_RETURN(model->fuse_unk_, OptionalBool(config, "fuse_unk", path, false));

  std::string vocab_path = JsonPath(path, "vocab");
  auto vocab_it = config.find("vocab");
  if (vocab_it == config.end() || !vocab_it->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("key '", vocab_path, "' must be an object {token: id}"));
  }
  model->vocab_.reserve(vocab_it->size());
  int64_t max_id = -1;
  for (auto it = vocab_it->begin(); it != vocab_it->end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() > INT32_MAX) {
      return absl::InvalidArgumentError(absl::StrCat("key '", vocab_path, "': token \"", it.key(),
                                                     "\" must map to a non-negative 32-bit id, found ",
                                                     it.value().dump()));
    }
    int32_t id = static_cast<int32_t>(it.value().get<int64_t>());
    model->vocab_[it.key()] = id;
    max_id = std::max<int64_t>(max_id, id);
  }
  model->id_to_token_.resize(static_cast<size_t>(max_id + 1));
  model->small_char_ids_.assign(kDirectCharIds, -1);
  model->has_id_.assign(static_cast<size_t>(max_id + 1), false);
  for (const auto& [token, id] : model->vocab_) {
    model->id_to_token_[id] = token;
    model->has_id_[id] = true;
    if (!token.empty() && CountCodepoints(token) == 1) {
      size_t pos = 0;
      char32_t c = NextCodepoint(token, pos);
      if (c < kDirectCharIds) {
        model->small_char_ids_[c] = id;
      } else {
        model->char_to_id_[c] = id;
      }
    }
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    auto it = model->vocab_.find(name);
    model->byte_token_ids_[b] = it == model->vocab_.end() ? -1 : it->second;
  }

  ASSIGN_OR_RETURN(std::optional<std::string> unk, OptionalString(config, "unk_token", path));
  if (unk) {
    auto it = model->vocab_.find(*unk);
    if (it == model->vocab_.end()) {
      // HF fails only when an unknown character actually occurs; such characters are dropped here.
      LOG(WARNING) << "tokenizer.json: " << JsonPath(path, "unk_token") << " \"" << *unk
                   << "\" is not in the vocabulary; characters outside the vocabulary will be dropped";
    } else {
      model->unk_id_ = it->second;
    }
  }

  std::string merges_path = JsonPath(path, "merges");
  const nlohmann::json empty_merges = nlohmann::json::array();
  const nlohmann::json* merges = &empty_merges;
  if (auto it = config.find("merges"); it != config.end() && !it->is_null()) {
    if (!it->is_array()) {
      return absl::InvalidArgumentError(absl::StrCat("key '", merges_path, "' must be an array"));
    }
    merges = &*it;
  }
  model->merges_.reserve(merges->size());
  for (size_t rank = 0; rank < merges->size(); ++rank) {
    std::string entry_path = JsonPath(merges_path, rank);
    ASSIGN_OR_RETURN(auto pair, ParseMerge((*merges)[rank], entry_path));
    auto left = model->vocab_.find(pair.first);
    auto right = model->vocab_.find(pair.second);
    auto merged = model->vocab_.find(pair.first + pair.second);
    for (auto [found, token] : {std::make_pair(left != model->vocab_.end(), pair.first),
                                std::make_pair(right != model->vocab_.end(), pair.second),
                                std::make_pair(merged != model->vocab_.end(), pair.first + pair.second)}) {
      if (!found) {
        return absl::InvalidArgumentError(
            absl::StrCat("key '", entry_path, "': token \"", token, "\" of this merge is not in ", vocab_path));
      }
    }
    // Like HF (a map built from the list), a repeated pair keeps its last rank.
    model->merges_[PairKey(left->second, right->second)] = {static_cast<int32_t>(rank), merged->second};
  }
  return model;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  auto it = vocab_.find(AbslView(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !has_id_[id]) return nullptr;
  return &id_to_token_[id];
}

void BpeModel::Tokenize(std::string_view word, std::vector<int32_t>& ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto it = vocab_.find(AbslView(word)); it != vocab_.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    absl::MutexLock lock(&cache_mutex_);
    if (auto it = cache_.find(AbslView(word)); it != cache_.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t first = ids.size();
  MergeWord(word, ids);
  if (cacheable) {
    absl::MutexLock lock(&cache_mutex_);
    if (cache_.size() < kMaxCacheEntries) {
      cache_.try_emplace(std::string(word), ids.begin() + static_cast<std::ptrdiff_t>(first), ids.end());
    }
  }
}

void BpeModel::MergeWord(std::string_view word, std::vector<int32_t>& ids) const {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto add = [&symbols](int32_t id) {
    int32_t index = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, index - 1, index + 1, true});
  };

  // Initial symbols: one per character, byte tokens for characters outside the vocabulary when
  // byte_fallback is on, else unk (runs fused into one when fuse_unk is on), else dropped.
  int32_t pending_unk = -1;
  size_t pos = 0;
  while (pos < word.size()) {
    size_t start = pos;
    char32_t c = NextCodepoint(word, pos);
    int32_t char_id = CharId(c);
    if (char_id >= 0) {
      if (pending_unk >= 0) {
        add(pending_unk);
        pending_unk = -1;
      }
      add(char_id);
      continue;
    }
    if (byte_fallback_) {
      bool all_bytes = true;
      for (size_t i = start; i < pos; ++i) all_bytes &= byte_token_ids_[static_cast<uint8_t>(word[i])] >= 0;
      if (all_bytes) {
        for (size_t i = start; i < pos; ++i) add(byte_token_ids_[static_cast<uint8_t>(word[i])]);
        continue;
      }
    }
    if (unk_id_) {
      if (pending_unk >= 0 && !fuse_unk_) add(pending_unk);
      pending_unk = *unk_id_;
    }
  }
  if (pending_unk >= 0) add(pending_unk);
  if (symbols.empty()) return;
  symbols.back().next = -1;

  // Lowest rank first, leftmost among equal ranks: HF's Word::merge_all. Short words (almost all
  // of them) take a linear scan over the pair ranks; long ones (whole texts under a null
  // pre-tokenizer) a heap.
  if (symbols.size() <= kLinearScanLimit) {
    MergeShortWord(symbols.size(), [&](size_t i) { return symbols[i].id; }, ids);
    return;
  }
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t left_id;
    int32_t right_id;
    int32_t merged_id;
  };
  auto worse = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::vector<Candidate> heap;
  heap.reserve(symbols.size());
  auto push = [&](int32_t pos, int32_t left_id, int32_t right_id, bool keep_heap) {
    const MergeTarget* m = FindMerge(left_id, right_id);
    if (m == nullptr) return;
    heap.push_back({m->rank, pos, left_id, right_id, m->merged_id});
    if (keep_heap) std::push_heap(heap.begin(), heap.end(), worse);
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    push(static_cast<int32_t>(i), symbols[i].id, symbols[i + 1].id, false);
  }
  std::make_heap(heap.begin(), heap.end(), worse);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), worse);
    Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    // A pair determines its merge, so unchanged ids mean the entry is still current.
    if (left.id != top.left_id || right.id != top.right_id) continue;
    left.id = top.merged_id;
    right.alive = false;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    if (left.prev >= 0) push(left.prev, symbols[left.prev].id, left.id, true);
    if (left.next >= 0) push(top.pos, left.id, symbols[left.next].id, true);
  }
  for (const Symbol& s : symbols) {
    if (s.alive) ids.push_back(s.id);
  }
}

template <typename SymbolId>
void BpeModel::MergeShortWord(size_t n, SymbolId&& symbol_id, std::vector<int32_t>& ids) const {
  constexpr int32_t kNoMerge = INT32_MAX;
  int32_t symbol[kLinearScanLimit];
  int32_t rank[kLinearScanLimit];    // rank[i]: merge of symbol[i] and symbol[i + 1]
  int32_t merged[kLinearScanLimit];
  auto update = [&](size_t i) {
    const MergeTarget* m = FindMerge(symbol[i], symbol[i + 1]);
    rank[i] = m == nullptr ? kNoMerge : m->rank;
    merged[i] = m == nullptr ? -1 : m->merged_id;
  };
  for (size_t i = 0; i < n; ++i) symbol[i] = symbol_id(i);
  for (size_t i = 0; i + 1 < n; ++i) update(i);
  while (n > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i) {
      if (rank[i] < rank[best]) best = i;
    }
    if (rank[best] == kNoMerge) break;
    symbol[best] = merged[best];
    for (size_t i = best + 1; i + 1 < n; ++i) {
      symbol[i] = symbol[i + 1];
      rank[i] = rank[i + 1];
      merged[i] = merged[i + 1];
    }
    --n;
    if (best > 0) update(best - 1);
    if (best + 1 < n) update(best);
  }
  ids.insert(ids.end(), symbol, symbol + n);
}

}  // namespace asyncspade::tokenizer
