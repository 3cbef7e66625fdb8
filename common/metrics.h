// A small Prometheus client: counters, gauges and fixed-bucket histograms, grouped in labelled
// families, rendered in the text exposition format 0.0.4.
//
// Hot paths (Increment, Set, Observe) are lock-free atomics on a series the caller already holds;
// only looking a series up by its label values (WithLabels) and rendering take a family's lock, so
// a caller that updates the same series often keeps the pointer WithLabels returned.
//
// Metric and label names are compile-time constants of the code that registers them: an invalid or
// duplicate name, or a label-value count that does not match the family's label names, is a
// programming error and fails a CHECK.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace asyncspade::metrics {

using LabelValues = std::vector<std::string>;

class Counter {
 public:
  // Adds `delta`; counters only go up, so a negative or NaN delta is ignored.
  void Increment(double delta = 1.0);
  // Mirrors a cumulative count that another process keeps (e.g. a member's heartbeat). A value
  // lower than the previous one means that process restarted; Prometheus reads it as a reset.
  void SetTotal(double total);
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Gauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Add(double delta);
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Histogram {
 public:
  // `upper_bounds`: finite, strictly increasing; the +Inf bucket is implicit.
  explicit Histogram(std::shared_ptr<const std::vector<double>> upper_bounds);
  void Observe(double value);

  struct Snapshot {
    std::vector<uint64_t> cumulative_counts;  // one per upper bound, then +Inf (== count)
    double sum = 0.0;
    uint64_t count = 0;
  };
  Snapshot Read() const;
  const std::vector<double>& upper_bounds() const { return *upper_bounds_; }

 private:
  std::shared_ptr<const std::vector<double>> upper_bounds_;
  // Per-bucket (not cumulative) counts, the last one for +Inf: an observation touches one bucket.
  std::unique_ptr<std::atomic<uint64_t>[]> bucket_counts_;
  std::atomic<double> sum_{0.0};
};

// `count` upper bounds: start, start*factor, start*factor^2, ...
std::vector<double> ExponentialBuckets(double start, double factor, int count);

class FamilyBase {
 public:
  virtual ~FamilyBase() = default;
  FamilyBase(const FamilyBase&) = delete;
  FamilyBase& operator=(const FamilyBase&) = delete;

  const std::string& name() const { return name_; }
  const std::string& type() const { return type_; }  // counter, gauge or histogram
  const std::vector<std::string>& label_names() const { return label_names_; }
  // Appends the HELP and TYPE lines and every series of this family.
  virtual void Render(std::string* out) const = 0;

 protected:
  FamilyBase(std::string name, std::string help, std::string type, std::vector<std::string> label_names);
  void RenderHeader(std::string* out) const;
  // `{a="x",b="y"` without the closing brace (so a histogram can append its `le`), or "" when
  // there are neither labels nor an extra label to come.
  std::string RenderLabels(const LabelValues& values) const;
  void CheckArity(const LabelValues& values) const;

 private:
  std::string name_;
  std::string help_;
  std::string type_;
  std::vector<std::string> label_names_;
};

template <typename Series>
class Family : public FamilyBase {
 public:
  // The series with these label values (one per label name, in order), created at zero on first
  // use. The returned pointer stays usable after Remove; the series is then no longer exported.
  std::shared_ptr<Series> WithLabels(const LabelValues& values) {
    CheckArity(values);
    absl::MutexLock lock(&mu_);
    auto [it, inserted] = series_.try_emplace(values);
    if (inserted) it->second = NewSeries();
    return it->second;
  }
  void Remove(const LabelValues& values) {
    absl::MutexLock lock(&mu_);
    series_.erase(values);
  }
  size_t size() const {
    absl::MutexLock lock(&mu_);
    return series_.size();
  }

 protected:
  using FamilyBase::FamilyBase;
  virtual std::shared_ptr<Series> NewSeries() const = 0;
  // Sorted by label values, so the exposition is deterministic.
  std::vector<std::pair<LabelValues, std::shared_ptr<Series>>> SnapshotSeries() const {
    absl::MutexLock lock(&mu_);
    return {series_.begin(), series_.end()};
  }

 private:
  mutable absl::Mutex mu_;
  std::map<LabelValues, std::shared_ptr<Series>> series_ ABSL_GUARDED_BY(mu_);
};

class CounterFamily final : public Family<Counter> {
 public:
  CounterFamily(std::string name, std::string help, std::vector<std::string> label_names);
  void Render(std::string* out) const override;

 private:
  std::shared_ptr<Counter> NewSeries() const override { return std::make_shared<Counter>(); }
};

class GaugeFamily final : public Family<Gauge> {
 public:
  GaugeFamily(std::string name, std::string help, std::vector<std::string> label_names);
  void Render(std::string* out) const override;

 private:
  std::shared_ptr<Gauge> NewSeries() const override { return std::make_shared<Gauge>(); }
};

class HistogramFamily final : public Family<Histogram> {
 public:
  HistogramFamily(std::string name, std::string help, std::vector<std::string> label_names,
                  std::vector<double> upper_bounds);
  void Render(std::string* out) const override;

 private:
  std::shared_ptr<Histogram> NewSeries() const override {
    return std::make_shared<Histogram>(upper_bounds_);
  }
  std::shared_ptr<const std::vector<double>> upper_bounds_;
};

// Owns families and renders them in registration order. Thread-safe. A family without labels
// exports its single series from the start (at zero); a labelled family exports only the series
// that were created, and just its HELP/TYPE lines while it has none.
class Registry {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Counter names end in `_total` (checked). The returned family lives as long as the registry.
  CounterFamily* AddCounter(const std::string& name, const std::string& help,
                            std::vector<std::string> label_names = {});
  GaugeFamily* AddGauge(const std::string& name, const std::string& help,
                        std::vector<std::string> label_names = {});
  HistogramFamily* AddHistogram(const std::string& name, const std::string& help,
                                std::vector<std::string> label_names, std::vector<double> upper_bounds);

  // The text exposition format 0.0.4 (content type `text/plain; version=0.0.4`).
  std::string Render() const;

 private:
  void CheckNewName(const std::string& name, bool histogram) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<FamilyBase>> families_ ABSL_GUARDED_BY(mu_);
};

inline constexpr char kExpositionContentType[] = "text/plain; version=0.0.4; charset=utf-8";

// Text-format helpers, exposed for tests: a sample value (`+Inf`, `-Inf`, `NaN`, else the shortest
// decimal that reads back exactly), a label value with `\`, `"` and newline escaped, a HELP text
// with `\` and newline escaped.
std::string FormatSampleValue(double value);
std::string EscapeLabelValue(const std::string& value);
std::string EscapeHelp(const std::string& help);

}  // namespace asyncspade::metrics
