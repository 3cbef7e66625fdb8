#include "services/kv_selector/selection/key_index.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"

namespace asyncspade::selection {

absl::Status KeyIndexShape::Validate() const {
  if (num_layers <= 0 || num_q_heads <= 0 || num_kv_heads <= 0 || head_dim <= 0 || page_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key index shape: num_layers (", num_layers, "), num_q_heads (", num_q_heads,
        "), num_kv_heads (", num_kv_heads, "), head_dim (", head_dim, ") and page_size (", page_size,
        ") must all be > 0; check the model geometry sent in HELLO"));
  }
  if (num_q_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("key index shape: num_q_heads (", num_q_heads,
                                                   ") must be a multiple of num_kv_heads (",
                                                   num_kv_heads, ")"));
  }
  return absl::OkStatus();
}

kernels::PagedKvLayout LayerKeys::layout() const {
  kernels::PagedKvLayout layout;
  layout.num_blocks = num_pages();
  layout.num_kv_heads = num_kv_heads_;
  layout.page_size = page_size_;
  layout.head_dim = head_dim_;
  return layout;
}

const float* LayerKeys::Key(int32_t position, int kv_head) const {
  DCHECK_LT(position, length_);
  return pages_.data() + layout().Offset(position / page_size_, kv_head, position % page_size_);
}

void LayerKeys::Init(int num_kv_heads, int head_dim, int page_size) {
  num_kv_heads_ = num_kv_heads;
  head_dim_ = head_dim;
  page_size_ = page_size;
  length_ = 0;
  pages_ = {};
  block_table_ = {};
}

size_t LayerKeys::BytesToHold(int32_t end_position) const {
  const size_t page_floats = size_t(num_kv_heads_) * page_size_ * head_dim_;
  const size_t pages_needed = (size_t(end_position) + page_size_ - 1) / page_size_;
  size_t capacity_pages = pages_.capacity() / std::max<size_t>(page_floats, 1);
  if (pages_needed <= capacity_pages) return pages_.capacity() * sizeof(float);
  capacity_pages = std::max<size_t>(capacity_pages, 1);
  while (capacity_pages < pages_needed) capacity_pages *= 2;
  return capacity_pages * page_floats * sizeof(float);
}

void LayerKeys::Write(int32_t start_position, int32_t num_tokens, const float* keys) {
  const int32_t end = start_position + num_tokens;
  const size_t page_floats = size_t(num_kv_heads_) * page_size_ * head_dim_;
  const size_t pages_needed = (size_t(std::max(end, length_)) + page_size_ - 1) / page_size_;
  if (pages_needed * page_floats > pages_.size()) {
    const size_t reserve_floats = BytesToHold(std::max(end, length_)) / sizeof(float);
    if (reserve_floats > pages_.capacity()) pages_.reserve(reserve_floats);
    pages_.resize(pages_needed * page_floats, 0.0f);
  }
  const kernels::PagedKvLayout paged = layout();
  for (int32_t i = 0; i < num_tokens; ++i) {
    const int32_t position = start_position + i;
    for (int h = 0; h < num_kv_heads_; ++h) {
      const float* src = keys + (size_t(i) * num_kv_heads_ + h) * head_dim_;
      std::memcpy(pages_.data() + paged.Offset(position / page_size_, h, position % page_size_), src,
                  sizeof(float) * head_dim_);
    }
  }
  length_ = std::max(length_, end);
  const int pages = num_pages();
  if (static_cast<int>(block_table_.size()) < pages) {
    const size_t old_size = block_table_.size();
    block_table_.resize(pages);
    std::iota(block_table_.begin() + old_size, block_table_.end(), static_cast<int32_t>(old_size));
  }
}

KeyIndex::KeyIndex(const KeyIndexShape& shape) : shape_(shape) {
  const absl::Status valid = shape.Validate();
  CHECK(valid.ok()) << valid;
}

std::shared_ptr<KeyIndex::SequenceKeys> KeyIndex::Find(int64_t sequence_id) const {
  absl::MutexLock lock(&mu_);
  auto it = sequences_.find(sequence_id);
  return it == sequences_.end() ? nullptr : it->second;
}

absl::Status KeyIndex::AppendKeys(int64_t sequence_id, int layer, int32_t start_position,
                                  int32_t num_tokens, const float* keys) {
  if (layer < 0 || layer >= shape_.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", sequence_id, ": layer ", layer,
                                                   " is outside the model's [0, ",
                                                   shape_.num_layers, ")"));
  }
  if (start_position < 0 || num_tokens < 0 || (num_tokens > 0 && keys == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequence ", sequence_id, " layer ", layer, ": bad key run (start ", start_position,
        ", ", num_tokens, " tokens); start and count must be >= 0 and keys present"));
  }
  std::shared_ptr<SequenceKeys> sequence = Find(sequence_id);
  if (sequence == nullptr) {
    if (start_position != 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sequence ", sequence_id, " is not indexed and its keys start at position ",
          start_position, "; send its keys from position 0 first"));
    }
    absl::MutexLock lock(&mu_);
    std::shared_ptr<SequenceKeys>& slot = sequences_[sequence_id];
    if (slot == nullptr) {
      slot = std::make_shared<SequenceKeys>();
      absl::MutexLock sequence_lock(&slot->mu);
      slot->layers.resize(shape_.num_layers);
      slot->has_layer.assign(shape_.num_layers, false);
    }
    sequence = slot;
  }

  absl::MutexLock lock(&sequence->mu);
  if (sequence->detached) {
    return absl::FailedPreconditionError(absl::StrCat("sequence ", sequence_id,
                                                      " was detached while its keys were being appended"));
  }
  LayerKeys& layer_keys = sequence->layers[layer];
  const bool had_layer = sequence->has_layer[layer];
  const bool restart = start_position == 0;
  if (!restart && (!had_layer || start_position > layer_keys.length())) {
    const int32_t have = had_layer ? layer_keys.length() : 0;
    return absl::FailedPreconditionError(absl::StrCat(
        "sequence ", sequence_id, " layer ", layer, ": keys start at position ", start_position,
        " but the index holds ", have, " keys; send positions ", have, ".. first"));
  }
  const int64_t old_keys = had_layer ? layer_keys.length() : 0;
  const size_t old_bytes = had_layer ? layer_keys.reserved_bytes() : 0;
  // A restart builds the new index aside, so a refused append leaves the old one intact.
  LayerKeys fresh;
  LayerKeys* target = &layer_keys;
  if (restart) {
    fresh.Init(shape_.num_kv_heads, shape_.head_dim, shape_.page_size);
    target = &fresh;
  }
  const size_t new_bytes = target->BytesToHold(std::max(start_position + num_tokens, target->length()));
  if (shape_.max_bytes > 0 && new_bytes > old_bytes) {
    const size_t grow = new_bytes - old_bytes;
    const size_t reserved = reserved_bytes_.load(std::memory_order_relaxed);
    if (reserved + grow > shape_.max_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "key index full: sequence ", sequence_id, " layer ", layer, " needs ", grow,
          " more bytes but ", reserved, " of max ", shape_.max_bytes,
          " are reserved; detach finished sequences or give the selector more memory"));
    }
  }
  target->Write(start_position, num_tokens, keys);
  if (restart) {
    layer_keys = std::move(fresh);
    sequence->has_layer[layer] = true;
  }
  reserved_bytes_.fetch_add(layer_keys.reserved_bytes(), std::memory_order_relaxed);
  reserved_bytes_.fetch_sub(old_bytes, std::memory_order_relaxed);
  indexed_keys_.fetch_add(layer_keys.length() - old_keys, std::memory_order_relaxed);
  return absl::OkStatus();
}

void KeyIndex::Detach(int64_t sequence_id) {
  std::shared_ptr<SequenceKeys> sequence;
  {
    absl::MutexLock lock(&mu_);
    auto it = sequences_.find(sequence_id);
    if (it == sequences_.end()) return;
    sequence = std::move(it->second);
    sequences_.erase(it);
  }
  absl::MutexLock lock(&sequence->mu);
  sequence->detached = true;
  for (size_t l = 0; l < sequence->layers.size(); ++l) {
    if (!sequence->has_layer[l]) continue;
    indexed_keys_.fetch_sub(sequence->layers[l].length(), std::memory_order_relaxed);
    reserved_bytes_.fetch_sub(sequence->layers[l].reserved_bytes(), std::memory_order_relaxed);
    sequence->layers[l] = LayerKeys();
    sequence->has_layer[l] = false;
  }
}

int32_t KeyIndex::Length(int64_t sequence_id, int layer) const {
  if (layer < 0 || layer >= shape_.num_layers) return -1;
  std::shared_ptr<SequenceKeys> sequence = Find(sequence_id);
  if (sequence == nullptr) return -1;
  absl::ReaderMutexLock lock(&sequence->mu);
  return sequence->has_layer[layer] ? sequence->layers[layer].length() : -1;
}

bool KeyIndex::HasSequence(int64_t sequence_id) const { return Find(sequence_id) != nullptr; }

int64_t KeyIndex::num_sequences() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(sequences_.size());
}

absl::Status KeyIndex::Read(int64_t sequence_id, int layer,
                            absl::FunctionRef<void(const LayerKeys&)> read) const {
  std::shared_ptr<SequenceKeys> sequence = Find(sequence_id);
  if (sequence == nullptr) {
    return absl::NotFoundError(absl::StrCat("sequence ", sequence_id,
                                            " is not indexed; append its keys first"));
  }
  absl::ReaderMutexLock lock(&sequence->mu);
  if (layer < 0 || layer >= shape_.num_layers || !sequence->has_layer[layer]) {
    return absl::NotFoundError(absl::StrCat("sequence ", sequence_id, " has no keys indexed for layer ",
                                            layer, "; append its keys from position 0 first"));
  }
  read(sequence->layers[layer]);
  return absl::OkStatus();
}

}  // namespace asyncspade::selection
