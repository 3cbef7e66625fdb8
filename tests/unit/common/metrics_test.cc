#include "common/metrics.h"

#include <cmath>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace asyncspade::metrics {
namespace {

TEST(MetricsFormatTest, SampleValues) {
  EXPECT_EQ(FormatSampleValue(0), "0");
  EXPECT_EQ(FormatSampleValue(3), "3");
  EXPECT_EQ(FormatSampleValue(-2.5), "-2.5");
  EXPECT_EQ(FormatSampleValue(0.1), "0.1");
  EXPECT_EQ(FormatSampleValue(1234567), "1234567");
  EXPECT_EQ(FormatSampleValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatSampleValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(FormatSampleValue(std::nan("")), "NaN");
  // Round trip: the shortest text that reads back to the same double.
  const double third = 1.0 / 3.0;
  EXPECT_EQ(std::stod(FormatSampleValue(third)), third);
}

TEST(MetricsFormatTest, Escaping) {
  EXPECT_EQ(EscapeLabelValue(R"(a"b\c)" "\n" "d"), R"(a\"b\\c\nd)");
  EXPECT_EQ(EscapeHelp("quote \" stays; back\\slash\nnew line"), "quote \" stays; back\\\\slash\\nnew line");
}

// The exposition of a small registry, written out by hand from the 0.0.4 text format.
TEST(MetricsRegistryTest, RendersGoldenExposition) {
  Registry registry;
  CounterFamily* requests = registry.AddCounter("demo_requests_total", "Requests served.", {"code", "api"});
  GaugeFamily* temperature = registry.AddGauge("demo_temperature_celsius", "Temperature\nof the \\ room.");
  HistogramFamily* latency =
      registry.AddHistogram("demo_latency_seconds", "Latency.", {"path"}, {0.125, 0.5, 2});
  registry.AddGauge("demo_empty", "A labelled family with no series yet.", {"member"});

  requests->WithLabels({"200", "http"})->Increment();
  requests->WithLabels({"200", "http"})->Increment(2);
  requests->WithLabels({"500", "grpc"})->Increment();
  requests->WithLabels({"400", "say \"hi\"\n"})->Increment(0.5);
  temperature->WithLabels({})->Set(21.25);
  auto root = latency->WithLabels({"/"});
  for (double v : {0.0625, 0.125, 0.25, 1.0, 7.0}) root->Observe(v);

  const std::string expected =
      "# HELP demo_requests_total Requests served.\n"
      "# TYPE demo_requests_total counter\n"
      "demo_requests_total{code=\"200\",api=\"http\"} 3\n"
      "demo_requests_total{code=\"400\",api=\"say \\\"hi\\\"\\n\"} 0.5\n"
      "demo_requests_total{code=\"500\",api=\"grpc\"} 1\n"
      "# HELP demo_temperature_celsius Temperature\\nof the \\\\ room.\n"
      "# TYPE demo_temperature_celsius gauge\n"
      "demo_temperature_celsius 21.25\n"
      "# HELP demo_latency_seconds Latency.\n"
      "# TYPE demo_latency_seconds histogram\n"
      "demo_latency_seconds_bucket{path=\"/\",le=\"0.125\"} 2\n"
      "demo_latency_seconds_bucket{path=\"/\",le=\"0.5\"} 3\n"
      "demo_latency_seconds_bucket{path=\"/\",le=\"2\"} 4\n"
      "demo_latency_seconds_bucket{path=\"/\",le=\"+Inf\"} 5\n"
      "demo_latency_seconds_sum{path=\"/\"} 8.4375\n"
      "demo_latency_seconds_count{path=\"/\"} 5\n"
      "# HELP demo_empty A labelled family with no series yet.\n"
      "# TYPE demo_empty gauge\n";
  EXPECT_EQ(registry.Render(), expected);
}

TEST(MetricsRegistryTest, UnlabelledFamiliesExportZeroFromTheStart) {
  Registry registry;
  registry.AddCounter("demo_events_total", "Events.");
  registry.AddHistogram("demo_size_bytes", "Sizes.", {}, {1024});
  EXPECT_EQ(registry.Render(),
            "# HELP demo_events_total Events.\n"
            "# TYPE demo_events_total counter\n"
            "demo_events_total 0\n"
            "# HELP demo_size_bytes Sizes.\n"
            "# TYPE demo_size_bytes histogram\n"
            "demo_size_bytes_bucket{le=\"1024\"} 0\n"
            "demo_size_bytes_bucket{le=\"+Inf\"} 0\n"
            "demo_size_bytes_sum 0\n"
            "demo_size_bytes_count 0\n");
}

TEST(MetricsRegistryTest, RemovedSeriesIsNoLongerExportedButStaysUsable) {
  Registry registry;
  GaugeFamily* usage = registry.AddGauge("demo_usage_ratio", "Usage.", {"member"});
  auto a = usage->WithLabels({"worker-a"});
  usage->WithLabels({"worker-b"})->Set(0.5);
  a->Set(0.25);
  usage->Remove({"worker-a"});
  a->Set(0.75);  // a holder may still write; nobody reads it any more
  const std::string text = registry.Render();
  EXPECT_EQ(text.find("worker-a"), std::string::npos) << text;
  EXPECT_NE(text.find("demo_usage_ratio{member=\"worker-b\"} 0.5\n"), std::string::npos) << text;
  // Asking again creates a fresh series at zero.
  EXPECT_EQ(usage->WithLabels({"worker-a"})->Value(), 0.0);
}

TEST(MetricsSeriesTest, CounterOnlyGoesUpButMirrorsTotals) {
  Counter counter;
  counter.Increment(2);
  counter.Increment(-5);
  counter.Increment(std::nan(""));
  EXPECT_EQ(counter.Value(), 2.0);
  counter.SetTotal(10);
  EXPECT_EQ(counter.Value(), 10.0);
  counter.SetTotal(3);  // the reporting process restarted
  EXPECT_EQ(counter.Value(), 3.0);
}

TEST(MetricsSeriesTest, HistogramBucketsAreLessOrEqual) {
  Histogram histogram(std::make_shared<const std::vector<double>>(std::vector<double>{1, 2}));
  histogram.Observe(1);  // exactly on a bound: counted in le="1"
  histogram.Observe(1.5);
  histogram.Observe(2.0000001);
  histogram.Observe(std::nan(""));  // dropped
  const Histogram::Snapshot snapshot = histogram.Read();
  EXPECT_EQ(snapshot.cumulative_counts, (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(snapshot.count, 3u);
  EXPECT_DOUBLE_EQ(snapshot.sum, 4.5000001);
}

TEST(MetricsSeriesTest, ConcurrentUpdatesAreNotLost) {
  Registry registry;
  auto counter = registry.AddCounter("demo_hits_total", "Hits.")->WithLabels({});
  auto histogram = registry.AddHistogram("demo_work_seconds", "Work.", {}, {0.5})->WithLabels({});
  GaugeFamily* per_thread = registry.AddGauge("demo_thread_value", "Per thread.", {"thread"});
  constexpr int kThreads = 8;
  constexpr int kIterations = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kIterations; ++i) {
        counter->Increment();
        histogram->Observe(i % 2 == 0 ? 0.25 : 1.0);
        per_thread->WithLabels({std::to_string(t)})->Add(1);
        if (i % 1000 == 0) registry.Render();  // rendering races with updates
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(counter->Value(), kThreads * kIterations);
  const Histogram::Snapshot snapshot = histogram->Read();
  EXPECT_EQ(snapshot.count, static_cast<uint64_t>(kThreads * kIterations));
  EXPECT_EQ(snapshot.cumulative_counts[0], static_cast<uint64_t>(kThreads * kIterations / 2));
  EXPECT_DOUBLE_EQ(snapshot.sum, kThreads * kIterations / 2 * (0.25 + 1.0));
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(per_thread->WithLabels({std::to_string(t)})->Value(), kIterations);
}

TEST(MetricsSeriesTest, ExponentialBuckets) {
  const std::vector<double> buckets = ExponentialBuckets(1, 2, 5);
  EXPECT_EQ(buckets, (std::vector<double>{1, 2, 4, 8, 16}));
}

using MetricsRegistryDeathTest = ::testing::Test;

TEST(MetricsRegistryDeathTest, ProgrammingErrorsFailLoudly) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        Registry registry;
        registry.AddCounter("demo_requests", "missing _total");
      },
      "end in _total");
  EXPECT_DEATH(
      {
        Registry registry;
        registry.AddGauge("demo-bad-name", "dash");
      },
      "invalid Prometheus metric name");
  EXPECT_DEATH(
      {
        Registry registry;
        registry.AddGauge("demo_x", "x", {"__reserved"});
      },
      "invalid label name");
  EXPECT_DEATH(
      {
        Registry registry;
        registry.AddHistogram("demo_latency_seconds", "h", {}, {1});
        registry.AddGauge("demo_latency_seconds_count", "collides with the histogram's _count");
      },
      "collides");
  EXPECT_DEATH(
      {
        Registry registry;
        registry.AddGauge("demo_g", "g", {"member"})->WithLabels({"a", "b"});
      },
      "2 label values for 1 label names");
  EXPECT_DEATH(
      {
        Registry registry;
        registry.AddHistogram("demo_h", "h", {}, {2, 1});
      },
      "increase strictly");
}

}  // namespace
}  // namespace asyncspade::metrics
