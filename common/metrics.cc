#include "common/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"

namespace asyncspade::metrics {
namespace {

bool IsValidMetricName(const std::string& name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    const bool digit = c >= '0' && c <= '9';
    if (!letter && !(digit && i > 0)) return false;
  }
  return true;
}

bool IsValidLabelName(const std::string& name) {
  if (name.empty() || name.rfind("__", 0) == 0) return false;  // `__` prefixes are Prometheus's own
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    const bool digit = c >= '0' && c <= '9';
    if (!letter && !(digit && i > 0)) return false;
  }
  return true;
}

void AtomicAdd(std::atomic<double>& target, double delta) {
  target.fetch_add(delta, std::memory_order_relaxed);
}

}  // namespace

std::string FormatSampleValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  CHECK(result.ec == std::errc()) << "to_chars of a double cannot overflow 64 bytes";
  return std::string(buffer, result.ptr);
}

std::string EscapeLabelValue(const std::string& value) {
  std::string out;
  out.reserve(value.size());
  for (const char c : value) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '"': out += "\\\""; break;
      case '\n': out += "\\n"; break;
      default: out += c;
    }
  }
  return out;
}

std::string EscapeHelp(const std::string& help) {
  std::string out;
  out.reserve(help.size());
  for (const char c : help) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      default: out += c;
    }
  }
  return out;
}

std::vector<double> ExponentialBuckets(double start, double factor, int count) {
  CHECK_GT(start, 0.0);
  CHECK_GT(factor, 1.0);
  CHECK_GT(count, 0);
  std::vector<double> bounds;
  bounds.reserve(count);
  double bound = start;
  for (int i = 0; i < count; ++i, bound *= factor) bounds.push_back(bound);
  return bounds;
}

// ------------------------------------------------------------------------------------------------
// Series
// ------------------------------------------------------------------------------------------------

void Counter::Increment(double delta) {
  if (!(delta > 0.0)) return;  // also drops NaN
  AtomicAdd(value_, delta);
}

void Counter::SetTotal(double total) {
  if (std::isnan(total)) return;
  value_.store(std::max(total, 0.0), std::memory_order_relaxed);
}

void Gauge::Add(double delta) { AtomicAdd(value_, delta); }

Histogram::Histogram(std::shared_ptr<const std::vector<double>> upper_bounds)
    : upper_bounds_(std::move(upper_bounds)),
      bucket_counts_(new std::atomic<uint64_t>[upper_bounds_->size() + 1]) {
  for (size_t i = 0; i <= upper_bounds_->size(); ++i) bucket_counts_[i].store(0, std::memory_order_relaxed);
}

void Histogram::Observe(double value) {
  if (std::isnan(value)) return;
  // Prometheus buckets are `le` (less than or equal): the first bound >= value.
  const auto& bounds = *upper_bounds_;
  const size_t bucket = std::lower_bound(bounds.begin(), bounds.end(), value) - bounds.begin();
  bucket_counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  AtomicAdd(sum_, value);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot snapshot;
  snapshot.cumulative_counts.resize(upper_bounds_->size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= upper_bounds_->size(); ++i) {
    running += bucket_counts_[i].load(std::memory_order_relaxed);
    snapshot.cumulative_counts[i] = running;
  }
  // The count is the +Inf bucket by construction, so _count and le="+Inf" always agree even while
  // observations race with the read.
  snapshot.count = running;
  snapshot.sum = sum_.load(std::memory_order_relaxed);
  return snapshot;
}

// ------------------------------------------------------------------------------------------------
// Families
// ------------------------------------------------------------------------------------------------

FamilyBase::FamilyBase(std::string name, std::string help, std::string type,
                       std::vector<std::string> label_names)
    : name_(std::move(name)), help_(std::move(help)), type_(std::move(type)), label_names_(std::move(label_names)) {
  CHECK(IsValidMetricName(name_)) << "invalid Prometheus metric name '" << name_ << "'";
  for (const std::string& label : label_names_) {
    CHECK(IsValidLabelName(label)) << "metric " << name_ << ": invalid label name '" << label << "'";
  }
  for (size_t i = 0; i < label_names_.size(); ++i) {
    for (size_t j = i + 1; j < label_names_.size(); ++j) {
      CHECK_NE(label_names_[i], label_names_[j]) << "metric " << name_ << ": duplicate label name";
    }
  }
}

void FamilyBase::RenderHeader(std::string* out) const {
  absl::StrAppend(out, "# HELP ", name_, " ", EscapeHelp(help_), "\n");
  absl::StrAppend(out, "# TYPE ", name_, " ", type_, "\n");
}

std::string FamilyBase::RenderLabels(const LabelValues& values) const {
  std::string out;
  for (size_t i = 0; i < label_names_.size(); ++i) {
    absl::StrAppend(&out, i == 0 ? "{" : ",", label_names_[i], "=\"", EscapeLabelValue(values[i]), "\"");
  }
  return out;
}

void FamilyBase::CheckArity(const LabelValues& values) const {
  CHECK_EQ(values.size(), label_names_.size())
      << "metric " << name_ << ": " << values.size() << " label values for " << label_names_.size()
      << " label names";
}

CounterFamily::CounterFamily(std::string name, std::string help, std::vector<std::string> label_names)
    : Family<Counter>(std::move(name), std::move(help), "counter", std::move(label_names)) {}

void CounterFamily::Render(std::string* out) const {
  RenderHeader(out);
  for (const auto& [values, counter] : SnapshotSeries()) {
    const std::string labels = RenderLabels(values);
    absl::StrAppend(out, name(), labels, labels.empty() ? "" : "}", " ", FormatSampleValue(counter->Value()), "\n");
  }
}

GaugeFamily::GaugeFamily(std::string name, std::string help, std::vector<std::string> label_names)
    : Family<Gauge>(std::move(name), std::move(help), "gauge", std::move(label_names)) {}

void GaugeFamily::Render(std::string* out) const {
  RenderHeader(out);
  for (const auto& [values, gauge] : SnapshotSeries()) {
    const std::string labels = RenderLabels(values);
    absl::StrAppend(out, name(), labels, labels.empty() ? "" : "}", " ", FormatSampleValue(gauge->Value()), "\n");
  }
}

HistogramFamily::HistogramFamily(std::string name, std::string help, std::vector<std::string> label_names,
                                 std::vector<double> upper_bounds)
    : Family<Histogram>(std::move(name), std::move(help), "histogram", std::move(label_names)) {
  for (const std::string& label : this->label_names()) {
    CHECK_NE(label, "le") << "metric " << this->name() << ": `le` is the histogram's own bucket label";
  }
  CHECK(!upper_bounds.empty()) << "metric " << this->name() << ": a histogram needs at least one bucket";
  for (size_t i = 0; i < upper_bounds.size(); ++i) {
    CHECK(std::isfinite(upper_bounds[i])) << "metric " << this->name() << ": bucket bounds must be finite "
                                          << "(+Inf is implicit)";
    if (i > 0) {
      CHECK_LT(upper_bounds[i - 1], upper_bounds[i])
          << "metric " << this->name() << ": bucket bounds must increase strictly";
    }
  }
  upper_bounds_ = std::make_shared<const std::vector<double>>(std::move(upper_bounds));
}

void HistogramFamily::Render(std::string* out) const {
  RenderHeader(out);
  for (const auto& [values, histogram] : SnapshotSeries()) {
    const std::string labels = RenderLabels(values);
    const std::string bucket_prefix = labels.empty() ? "{" : labels + ",";
    const Histogram::Snapshot snapshot = histogram->Read();
    const std::vector<double>& bounds = *upper_bounds_;
    for (size_t i = 0; i <= bounds.size(); ++i) {
      const std::string le = i < bounds.size() ? FormatSampleValue(bounds[i]) : "+Inf";
      absl::StrAppend(out, name(), "_bucket", bucket_prefix, "le=\"", le, "\"} ",
                      snapshot.cumulative_counts[i], "\n");
    }
    const std::string closed = labels.empty() ? "" : labels + "}";
    absl::StrAppend(out, name(), "_sum", closed, " ", FormatSampleValue(snapshot.sum), "\n");
    absl::StrAppend(out, name(), "_count", closed, " ", snapshot.count, "\n");
  }
}

// ------------------------------------------------------------------------------------------------
// Registry
// ------------------------------------------------------------------------------------------------

namespace {

// The sample names a family writes: a histogram `x` also writes `x_bucket`, `x_sum` and `x_count`.
std::vector<std::string> SampleNames(const std::string& name, bool histogram) {
  if (!histogram) return {name};
  return {name, name + "_bucket", name + "_sum", name + "_count"};
}

}  // namespace

void Registry::CheckNewName(const std::string& name, bool histogram) const {
  for (const auto& family : families_) {
    for (const std::string& existing : SampleNames(family->name(), family->type() == "histogram")) {
      for (const std::string& added : SampleNames(name, histogram)) {
        CHECK_NE(existing, added) << "metric " << name << " collides with the registered metric " << family->name();
      }
    }
  }
}

CounterFamily* Registry::AddCounter(const std::string& name, const std::string& help,
                                    std::vector<std::string> label_names) {
  CHECK(name.size() > 6 && name.compare(name.size() - 6, 6, "_total") == 0)
      << "counter " << name << ": Prometheus counter names end in _total";
  absl::MutexLock lock(&mu_);
  CheckNewName(name, /*histogram=*/false);
  auto family = std::make_unique<CounterFamily>(name, help, std::move(label_names));
  CounterFamily* raw = family.get();
  if (raw->label_names().empty()) raw->WithLabels({});
  families_.push_back(std::move(family));
  return raw;
}

GaugeFamily* Registry::AddGauge(const std::string& name, const std::string& help,
                                std::vector<std::string> label_names) {
  absl::MutexLock lock(&mu_);
  CheckNewName(name, /*histogram=*/false);
  auto family = std::make_unique<GaugeFamily>(name, help, std::move(label_names));
  GaugeFamily* raw = family.get();
  if (raw->label_names().empty()) raw->WithLabels({});
  families_.push_back(std::move(family));
  return raw;
}

HistogramFamily* Registry::AddHistogram(const std::string& name, const std::string& help,
                                        std::vector<std::string> label_names, std::vector<double> upper_bounds) {
  absl::MutexLock lock(&mu_);
  CheckNewName(name, /*histogram=*/true);
  auto family = std::make_unique<HistogramFamily>(name, help, std::move(label_names), std::move(upper_bounds));
  HistogramFamily* raw = family.get();
  if (raw->label_names().empty()) raw->WithLabels({});
  families_.push_back(std::move(family));
  return raw;
}

std::string Registry::Render() const {
  std::string out;
  absl::MutexLock lock(&mu_);
  for (const auto& family : families_) family->Render(&out);
  return out;
}

}  // namespace asyncspade::metrics
