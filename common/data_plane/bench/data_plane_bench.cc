// Loopback latency and bandwidth of one data-plane channel between two processes on this machine:
// the decode-worker end (this process) against a forked selector end that echoes or counts.
//
//   asyncspade_data_plane_bench [--transport gloo] [--host 127.0.0.1] [--quick] [--json out.json]
//
// Prints a table; with --json also writes the numbers. Round trips are ping-pong (one message each
// way); "one way" is half the round trip. Bandwidth streams messages one way back to back and
// stops the clock when the receiver acknowledges the last byte.
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/data_plane/async_channel.h"
#include "common/data_plane/channel_factory.h"
#include "common/data_plane/file_rendezvous_store.h"
#include "common/data_plane/message_header.h"
#include "nlohmann/json.hpp"

namespace asyncspade::data_plane {
namespace {

constexpr uint32_t kPing = 1, kPong = 2, kStream = 3, kStreamEnd = 4, kStreamAck = 5, kQuit = 9;

using Clock = std::chrono::steady_clock;
double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

ChannelSpec MakeSpec(RendezvousStore* store, ChannelRole role, const std::string& host) {
  ChannelSpec spec;
  spec.channel_id = "bench";
  spec.epoch = 1;
  spec.role = role;
  spec.store = store;
  spec.host = host;
  spec.max_message_bytes = uint64_t{1} << 31;
  return spec;
}

// The selector end: echoes pings, counts streamed bytes, acknowledges the end of a stream.
int RunPeer(const std::string& store_dir, Transport transport, const std::string& host) {
  auto store = FileRendezvousStore::Open(store_dir);
  if (!store.ok()) return 1;
  auto channel = CreateChannel(MakeSpec(store->get(), ChannelRole::kSelector, host), transport);
  if (!channel.ok()) {
    std::fprintf(stderr, "peer: %s\n", channel.status().ToString().c_str());
    return 1;
  }
  uint64_t streamed = 0;
  for (;;) {
    absl::StatusOr<Message> message = (*channel)->Recv(absl::InfiniteDuration());
    if (!message.ok()) return absl::IsUnavailable(message.status()) ? 0 : 1;
    std::vector<Buffer> parts;
    for (const auto& part : message->parts) parts.push_back(Buffer{part.data(), part.size()});
    switch (message->tag) {
      case kPing:
        if (!(*channel)->Send(kPong, parts).ok()) return 1;
        break;
      case kStream:
        streamed += message->payload_bytes();
        break;
      case kStreamEnd: {
        const Buffer count{&streamed, sizeof(streamed)};
        if (!(*channel)->Send(kStreamAck, {&count, 1}).ok()) return 1;
        streamed = 0;
        break;
      }
      case kQuit:
        return 0;
      default:
        return 1;
    }
  }
}

struct LatencyRow {
  size_t bytes;
  int iterations;
  double p50_us, p99_us, mean_us;
};

struct BandwidthRow {
  size_t message_bytes;
  int messages;
  double seconds;
  double gib_per_s;
};

std::vector<uint8_t> Payload(size_t bytes) {
  std::vector<uint8_t> data(bytes);
  for (size_t i = 0; i < bytes; ++i) data[i] = static_cast<uint8_t>(i * 131 + 7);
  return data;
}

absl::StatusOr<LatencyRow> MeasureLatency(Channel& channel, size_t bytes, int iterations) {
  const std::vector<uint8_t> payload = Payload(bytes);
  const Buffer part{payload.data(), payload.size()};
  std::vector<double> rtt_us;
  for (int i = -iterations / 10 - 1; i < iterations; ++i) {  // negative i: warm-up
    const auto start = Clock::now();
    if (absl::Status s = channel.Send(kPing, {&part, 1}); !s.ok()) return s;
    absl::StatusOr<Message> pong = channel.Recv(absl::Seconds(30));
    if (!pong.ok()) return pong.status();
    if (pong->tag != kPong || pong->payload_bytes() != bytes) {
      return absl::InternalError("the peer answered with the wrong message");
    }
    if (i >= 0) rtt_us.push_back(Seconds(Clock::now() - start) * 1e6);
  }
  std::sort(rtt_us.begin(), rtt_us.end());
  double sum = 0;
  for (double v : rtt_us) sum += v;
  return LatencyRow{bytes, iterations, rtt_us[rtt_us.size() / 2],
                    rtt_us[std::min(rtt_us.size() - 1, rtt_us.size() * 99 / 100)],
                    sum / rtt_us.size()};
}

absl::StatusOr<BandwidthRow> MeasureBandwidth(Channel& channel, size_t message_bytes,
                                              int messages) {
  const std::vector<uint8_t> payload = Payload(message_bytes);
  const Buffer part{payload.data(), payload.size()};
  const auto start = Clock::now();
  for (int i = 0; i < messages; ++i) {
    if (absl::Status s = channel.Send(kStream, {&part, 1}); !s.ok()) return s;
  }
  if (absl::Status s = channel.Send(kStreamEnd, {}); !s.ok()) return s;
  absl::StatusOr<Message> ack = channel.Recv(absl::Seconds(120));
  if (!ack.ok()) return ack.status();
  const double seconds = Seconds(Clock::now() - start);
  uint64_t received = 0;
  if (ack->tag != kStreamAck || ack->parts.size() != 1 || ack->parts[0].size() != sizeof(received)) {
    return absl::InternalError("the peer did not acknowledge the stream");
  }
  std::memcpy(&received, ack->parts[0].data(), sizeof(received));
  if (received != uint64_t{message_bytes} * messages) {
    return absl::InternalError(absl::StrFormat("the peer counted %d bytes, %d were sent", received,
                                               uint64_t{message_bytes} * messages));
  }
  return BandwidthRow{message_bytes, messages, seconds,
                      static_cast<double>(received) / seconds / (1u << 30)};
}

// How long the decode loop spends in AsyncChannel::Send for a per-step sized message, while the
// sender thread drains the queue concurrently.
absl::StatusOr<double> MeasureAsyncEnqueue(std::unique_ptr<Channel> channel, size_t bytes,
                                           int messages) {
  AsyncChannel async(std::move(channel));
  const std::vector<uint8_t> payload = Payload(bytes);
  const Buffer part{payload.data(), payload.size()};
  double total_us = 0;
  for (int i = 0; i < messages; ++i) {
    const auto start = Clock::now();
    if (absl::Status s = async.Send(kStream, {&part, 1}); !s.ok()) return s;
    total_us += Seconds(Clock::now() - start) * 1e6;
  }
  if (absl::Status s = async.Send(kStreamEnd, std::vector<std::vector<uint8_t>>{}); !s.ok()) {
    return s;
  }
  absl::StatusOr<Message> ack = async.Recv(absl::Seconds(120));
  if (!ack.ok()) return ack.status();
  if (absl::Status s = async.Send(kQuit, std::vector<std::vector<uint8_t>>{}); !s.ok()) return s;
  async.Close(absl::Seconds(10));
  return total_us / messages;
}

int Main(int argc, char** argv) {
  std::string json_path, host = "127.0.0.1", transport_name = "gloo";
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const char* name) -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", name);
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--json") {
      json_path = value("--json");
    } else if (arg == "--host") {
      host = value("--host");
    } else if (arg == "--transport") {
      transport_name = value("--transport");
    } else if (arg == "--quick") {
      quick = true;
    } else {
      std::fprintf(stderr,
                   "usage: %s [--transport gloo] [--host 127.0.0.1] [--quick] [--json out.json]\n",
                   argv[0]);
      return 2;
    }
  }
  absl::StatusOr<Transport> transport = ParseTransport(transport_name);
  if (!transport.ok()) {
    std::fprintf(stderr, "%s\n", transport.status().ToString().c_str());
    return 2;
  }

  char dir_template[] = "/tmp/asyncspade_dp_bench_XXXXXX";
  if (mkdtemp(dir_template) == nullptr) {
    std::perror("mkdtemp");
    return 1;
  }
  const std::string store_dir = dir_template;
  std::fflush(nullptr);
  const pid_t peer = fork();
  if (peer == 0) _exit(RunPeer(store_dir, *transport, host));

  int exit_code = 0;
  auto fail = [&](const absl::Status& status) {
    std::fprintf(stderr, "benchmark failed: %s\n", status.ToString().c_str());
    exit_code = 1;
  };
  nlohmann::json report;
  {
    auto store = FileRendezvousStore::Open(store_dir);
    auto channel = store.ok() ? CreateChannel(MakeSpec(store->get(), ChannelRole::kDecodeWorker,
                                                       host),
                                              *transport)
                              : absl::StatusOr<std::unique_ptr<Channel>>(store.status());
    if (!channel.ok()) {
      fail(channel.status());
    } else {
      const int scale = quick ? 10 : 1;
      std::printf("data plane loopback benchmark: transport %s, host %s, 2 processes\n\n",
                  TransportName(*transport), host.c_str());
      std::printf("%12s %8s %12s %12s %12s %14s\n", "message", "round", "rtt p50", "rtt p99",
                  "rtt mean", "one way p50");
      std::printf("%12s %8s %12s %12s %12s %14s\n", "bytes", "trips", "us", "us", "us", "us");
      // The two sizes around the inline limit show the extra round trip of a separate payload.
      const size_t largest_inline = kHeadTransferCapacity - kFixedHeaderBytes - 8;
      const std::vector<std::pair<size_t, int>> latency_cases = {
          {0, 5000},          {64, 5000},          {4096, 5000},
          {65536, 3000},      {largest_inline, 2000}, {largest_inline + 1, 2000},
          {1 << 20, 500},     {4 << 20, 100}};
      for (const auto& [bytes, iterations] : latency_cases) {
        absl::StatusOr<LatencyRow> row = MeasureLatency(**channel, bytes, iterations / scale);
        if (!row.ok()) {
          fail(row.status());
          break;
        }
        std::printf("%12zu %8d %12.1f %12.1f %12.1f %14.1f\n", row->bytes, row->iterations,
                    row->p50_us, row->p99_us, row->mean_us, row->p50_us / 2);
        report["latency"].push_back({{"bytes", row->bytes},
                                     {"round_trips", row->iterations},
                                     {"rtt_p50_us", row->p50_us},
                                     {"rtt_p99_us", row->p99_us},
                                     {"rtt_mean_us", row->mean_us}});
      }
      std::printf("\n%12s %8s %12s %12s\n", "message", "messages", "seconds", "GiB/s");
      const std::vector<std::pair<size_t, int>> bandwidth_cases = {
          {16384, 20000}, {65536, 8000}, {1 << 20, 1000}, {4 << 20, 256}, {16 << 20, 64}};
      for (const auto& [bytes, messages] : bandwidth_cases) {
        if (exit_code != 0) break;
        absl::StatusOr<BandwidthRow> row = MeasureBandwidth(**channel, bytes, messages / scale);
        if (!row.ok()) {
          fail(row.status());
          break;
        }
        std::printf("%12zu %8d %12.3f %12.2f\n", row->message_bytes, row->messages, row->seconds,
                    row->gib_per_s);
        report["bandwidth"].push_back({{"message_bytes", row->message_bytes},
                                       {"messages", row->messages},
                                       {"seconds", row->seconds},
                                       {"gib_per_s", row->gib_per_s}});
      }
      if (exit_code == 0) {
        absl::StatusOr<double> enqueue_us =
            MeasureAsyncEnqueue(*std::move(channel), 16384, 20000 / scale);
        if (!enqueue_us.ok()) {
          fail(enqueue_us.status());
        } else {
          std::printf("\nAsyncChannel::Send of 16384 bytes (copy + enqueue): %.2f us mean\n",
                      *enqueue_us);
          report["async_enqueue_16k_us"] = *enqueue_us;
        }
      }
    }
  }
  if (exit_code != 0) kill(peer, SIGKILL);
  int status = 0;
  waitpid(peer, &status, 0);
  if (exit_code == 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
    std::fprintf(stderr, "the peer process failed (status %d)\n", status);
    exit_code = 1;
  }
  std::error_code ignored;
  std::filesystem::remove_all(store_dir, ignored);
  if (exit_code == 0 && !json_path.empty()) {
    report["transport"] = TransportName(*transport);
    report["host"] = host;
    std::ofstream out(json_path);
    out << report.dump(2) << "\n";
    if (!out) {
      std::fprintf(stderr, "could not write %s\n", json_path.c_str());
      return 1;
    }
  }
  return exit_code;
}

}  // namespace
}  // namespace asyncspade::data_plane

int main(int argc, char** argv) { return asyncspade::data_plane::Main(argc, argv); }
