// `asyncspade ctl`: the operator's view of a running deployment, through the controller's control
// plane: `status` (every process, its links and load), `drain MEMBER`, `scale selectors N`.
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"
#include "tools/cli/args.h"
#include "tools/cli/commands.h"
#include "tools/launcher/controller_client.h"

namespace asyncspade::cli {
namespace {

namespace control = ::asyncspade::control::v1;

constexpr char kDefaultEndpoint[] = "127.0.0.1:50051";

const std::vector<FlagSpec>& CtlFlags() {
  static const std::vector<FlagSpec> flags = {
      {"endpoint", true, "the controller's gRPC address (default: $ASYNCSPADE_ENDPOINT, else 127.0.0.1:50051)"},
      {"json", false, "print the controller's answer as JSON (for scripts)"},
      {"help", false, "show this help"},
  };
  return flags;
}

constexpr char kSynopsis[] =
    "[--endpoint HOST:PORT] [--json] (status | drain MEMBER | scale selectors N)\n"
    "  status                 every process: id, role, devices, state, pid, links, load, last heartbeat\n"
    "  drain MEMBER           stop routing to MEMBER; the launcher stops it once it is idle\n"
    "  scale selectors N      set the desired KV-selector count; the launcher starts/stops processes";

std::string RoleText(control::Role role) {
  switch (role) {
    case control::ROLE_DECODE_WORKER: return "decode-worker";
    case control::ROLE_KV_SELECTOR: return "kv-selector";
    default: return "?";
  }
}

std::string StateText(control::MemberState state) {
  switch (state) {
    case control::MEMBER_STATE_STARTING: return "STARTING";
    case control::MEMBER_STATE_READY: return "READY";
    case control::MEMBER_STATE_DRAINING: return "DRAINING";
    case control::MEMBER_STATE_UNHEALTHY: return "UNHEALTHY";
    case control::MEMBER_STATE_GONE: return "GONE";
    default: return "?";
  }
}

std::string RangeText(const control::LayerRange& r) {
  return r.first() == r.last() ? absl::StrCat(r.first()) : absl::StrCat(r.first(), "-", r.last());
}

// "selector-0 L0-14 e3" from a decode worker's side, "decode-worker-0 L0-14 e3" from a selector's.
std::string LinksText(const control::Member& m) {
  if (m.links().empty()) return "-";
  std::vector<std::string> parts;
  for (const control::SelectorLink& link : m.links()) {
    const std::string& peer =
        m.role() == control::ROLE_DECODE_WORKER ? link.selector_id() : link.decode_worker_id();
    parts.push_back(absl::StrCat(peer, " L", RangeText(link.layers()), " e", link.epoch()));
  }
  return absl::StrJoin(parts, ", ");
}

std::string LoadText(const control::Member& m) {
  const control::Load& l = m.load();
  if (m.role() == control::ROLE_KV_SELECTOR) return absl::StrCat("seqs ", l.attached_sequences());
  std::string out = absl::StrFormat("run %d wait %d kv %.0f%%", l.running_requests(), l.waiting_requests(),
                                    100.0 * l.kv_cache_usage());
  if (m.in_flight_requests() > 0) absl::StrAppend(&out, absl::StrFormat(" relayed %d", m.in_flight_requests()));
  if (l.dense_fallbacks_total() > 0 || l.selector_stalls_total() > 0) {
    absl::StrAppend(&out, absl::StrFormat(" lag %.1f stalls %d fallbacks %d", l.selector_lag_steps(),
                                          l.selector_stalls_total(), l.dense_fallbacks_total()));
  }
  return out;
}

void PrintStatus(const control::ListMembersResponse& r) {
  std::vector<std::vector<std::string>> rows = {
      {"ID", "ROLE", "DEVICES", "STATE", "PID", "HEARTBEAT", "LOAD", "LINKS (layers, epoch)"}};
  for (const control::Member& m : r.members()) {
    std::string state = StateText(m.state());
    if (m.drain_requested() && m.state() != control::MEMBER_STATE_DRAINING) absl::StrAppend(&state, " (drain)");
    if (m.applied_assignment_version() < r.assignment_version()) {
      absl::StrAppend(&state, " (applying v", r.assignment_version(), ")");
    }
    rows.push_back({m.member_id(), RoleText(m.role()), m.devices().empty() ? "-" : absl::StrJoin(m.devices(), ","),
                    state, absl::StrCat(m.pid()), absl::StrFormat("%.1fs ago", m.seconds_since_heartbeat()),
                    LoadText(m), LinksText(m)});
  }
  std::vector<size_t> widths(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) widths[c] = std::max(widths[c], row[c].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      absl::StrAppend(&line, row[c]);
      if (c + 1 < row.size()) line.append(widths[c] - row[c].size() + 2, ' ');
    }
    std::printf("%s\n", line.c_str());
  }
  if (r.members().empty()) std::printf("(no process is registered)\n");
  std::printf("\nmodel: %s   default policy: %s   desired selectors: %d   assignment version: %llu\n",
              r.model().c_str(), r.default_policy().c_str(), r.desired_selectors(),
              static_cast<unsigned long long>(r.assignment_version()));
  if (r.serving()) {
    std::printf("serving: yes\n");
  } else {
    std::printf("serving: NO (%s)\n", r.not_serving_reason().c_str());
  }
  if (!r.uncovered_layers().empty()) {
    std::vector<std::string> ranges;
    for (const control::LayerRange& range : r.uncovered_layers()) ranges.push_back(RangeText(range));
    std::printf("layers without a READY selector: %s (asyncspade falls back to dense there)\n",
                absl::StrJoin(ranges, ", ").c_str());
  }
}

int PrintJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(message, &json, options).ok()) {
    std::fprintf(stderr, "asyncspade ctl: cannot render the answer as JSON\n");
    return 1;
  }
  std::fputs(json.c_str(), stdout);
  if (json.empty() || json.back() != '\n') std::fputc('\n', stdout);
  return 0;
}

int Failed(const absl::Status& status, const std::string& endpoint) {
  const absl::Status explained = launcher::ExplainUnreachable(status, endpoint);
  std::fprintf(stderr, "asyncspade ctl: %s: %s\n", absl::StatusCodeToString(explained.code()).c_str(),
               std::string(explained.message()).c_str());
  return 1;
}

int CtlCommand(int argc, char** argv) {
  int exit_code = 0;
  std::optional<Args> args = ParseCommandArgs(argc, argv, "ctl", kSynopsis, CtlFlags(), &exit_code);
  if (!args) return exit_code;
  const char* env_endpoint = std::getenv("ASYNCSPADE_ENDPOINT");
  const std::string endpoint =
      args->GetOr("endpoint", env_endpoint != nullptr && *env_endpoint != '\0' ? env_endpoint : kDefaultEndpoint);
  const bool json = args->Has("json");
  const std::vector<std::string>& words = args->positional();
  auto usage_error = [](const std::string& message) {
    std::fprintf(stderr, "asyncspade ctl: %s\n(asyncspade ctl --help lists the commands)\n", message.c_str());
    return 2;
  };
  if (words.empty()) return usage_error("give a command: status, drain MEMBER or scale selectors N");

  launcher::ControllerClient client(endpoint);
  if (words[0] == "status") {
    if (words.size() != 1) return usage_error("status takes no argument");
    absl::StatusOr<control::ListMembersResponse> members = client.ListMembers();
    if (!members.ok()) return Failed(members.status(), endpoint);
    if (json) return PrintJson(*members);
    PrintStatus(*members);
    return 0;
  }
  if (words[0] == "drain") {
    if (words.size() != 2) return usage_error("usage: ctl drain MEMBER (an id from `asyncspade ctl status`)");
    if (absl::Status s = client.Drain(words[1]); !s.ok()) return Failed(s, endpoint);
    if (json) {
      std::printf("{\"drained\": \"%s\"}\n", words[1].c_str());
    } else {
      std::printf("drain requested for %s: it gets no new work; the launcher stops it once it is idle\n",
                  words[1].c_str());
    }
    return 0;
  }
  if (words[0] == "scale") {
    int replicas = 0;
    if (words.size() != 3 || words[1] != "selectors" || !absl::SimpleAtoi(words[2], &replicas) || replicas < 0) {
      return usage_error("usage: ctl scale selectors N (N >= 0)");
    }
    absl::StatusOr<int> desired = client.ScaleSelectors(replicas);
    if (!desired.ok()) return Failed(desired.status(), endpoint);
    if (json) {
      control::ScaleSelectorsResponse response;
      response.set_desired_selectors(*desired);
      return PrintJson(response);
    }
    std::printf("desired selectors: %d (the launcher starts or stops selector processes to match; "
                "watch `asyncspade ctl status`)\n",
                *desired);
    return 0;
  }
  return usage_error(absl::StrCat("unknown command '", words[0], "'; use status, drain MEMBER or scale selectors N"));
}

}  // namespace

ASYNCSPADE_REGISTER_COMMAND(ctl, "operate a running deployment: status, drain, scale", CtlCommand);

}  // namespace asyncspade::cli
