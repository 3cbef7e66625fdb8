// The OpenAI HTTP server over real loopback sockets, in front of a scripted fake router.
#include "services/controller/http/openai_http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <memory>
#include <thread>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "services/controller/controller_metrics.h"
#include "tests/unit/services/controller/http/fake_generation_router.h"

namespace asyncspade::controller::http {
namespace {

using nlohmann::json;
using testing::FakeGenerationRouter;
using testing::FakeScript;

// The `data:` payloads of a server-sent-event body, in order (comments skipped).
std::vector<std::string> SseData(const std::string& body) {
  std::vector<std::string> data;
  for (absl::string_view event : absl::StrSplit(body, "\n\n", absl::SkipEmpty())) {
    for (absl::string_view line : absl::StrSplit(event, '\n')) {
      if (absl::StartsWith(line, "data: ")) data.emplace_back(line.substr(6));
    }
  }
  return data;
}

bool Contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (condition()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return condition();
}

class OpenAiHttpServerTest : public ::testing::Test {
 protected:
  void StartServer(OpenAiServerOptions options = {}) {
    options.host = "127.0.0.1";
    options.port = 0;
    if (options.stream_keepalive == absl::Seconds(1)) options.stream_keepalive = absl::Milliseconds(50);
    server_ = std::make_unique<OpenAiHttpServer>(&router_, metrics_.get(), options);
    absl::StatusOr<int> port = server_->Start();
    ASSERT_TRUE(port.ok()) << port.status();
    ASSERT_GT(*port, 0);
    port_ = *port;
    client_ = std::make_unique<httplib::Client>("127.0.0.1", port_);
    client_->set_read_timeout(30, 0);
  }

  void TearDown() override {
    client_.reset();
    if (server_ != nullptr) server_->Stop();
  }

  httplib::Result Post(const std::string& path, const json& body, const httplib::Headers& headers = {}) {
    return client_->Post(path.c_str(), headers, body.dump(), "application/json");
  }

  // A raw connection, for clients that walk away mid-stream.
  int ConnectAndSend(const std::string& path, const std::string& body) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    EXPECT_GE(fd, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port_));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    const std::string request = absl::StrCat("POST ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                                             "Content-Type: application/json\r\nContent-Length: ", body.size(),
                                             "\r\n\r\n", body);
    EXPECT_EQ(send(fd, request.data(), request.size(), 0), static_cast<ssize_t>(request.size()));
    return fd;
  }

  // Reads until `needle` has appeared `times` times (or the peer closes); returns what was read.
  static std::string ReadUntil(int fd, const std::string& needle, int times) {
    std::string received;
    char buffer[4096];
    while (true) {
      int found = 0;
      for (size_t at = received.find(needle); at != std::string::npos; at = received.find(needle, at + 1)) ++found;
      if (found >= times) break;
      const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
      if (n <= 0) break;
      received.append(buffer, n);
    }
    return received;
  }

  FakeGenerationRouter router_;
  std::unique_ptr<ControllerMetrics> metrics_ = CreateControllerMetrics();
  std::unique_ptr<OpenAiHttpServer> server_;
  std::unique_ptr<httplib::Client> client_;
  int port_ = 0;
};

TEST_F(OpenAiHttpServerTest, CompletionWhole) {
  StartServer();
  auto res = Post("/v1/completions", {{"model", "fake-model"},
                                      {"prompt", "Say hello"},
                                      {"max_tokens", 7},
                                      {"temperature", 0.5},
                                      {"stop", "\n"},
                                      {"sparse_policy", "asyncspade"}});
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(res->get_header_value("Content-Type"), "application/json");
  const json body = json::parse(res->body);
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["id"], "cmpl-req-1");
  EXPECT_EQ(res->get_header_value("X-Request-Id"), "req-1");
  EXPECT_EQ(body["model"], "fake-model");
  EXPECT_EQ(body["choices"][0]["text"], "Hello, world!");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(body["usage"]["prompt_tokens"], 5);
  EXPECT_EQ(body["usage"]["completion_tokens"], 4);
  EXPECT_EQ(body["usage"]["total_tokens"], 9);

  const auto requests = router_.requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].text(), "Say hello");
  EXPECT_EQ(requests[0].stop().max_tokens(), 7);
  EXPECT_FLOAT_EQ(requests[0].sampling().temperature(), 0.5f);
  ASSERT_EQ(requests[0].stop().stop_size(), 1);
  EXPECT_EQ(requests[0].sparse().policy(), serving::v1::SPARSE_POLICY_ASYNCSPADE);
}

TEST_F(OpenAiHttpServerTest, CompletionStreamWithUsage) {
  StartServer();
  FakeScript script;
  script.finish_reason = serving::v1::FINISH_REASON_LENGTH;
  script.chunk_delay = absl::Milliseconds(120);  // longer than the keep-alive period: comments interleave
  router_.SetScript(script);
  auto res = Post("/v1/completions",
                  {{"prompt", "x"}, {"stream", true}, {"stream_options", {{"include_usage", true}}}},
                  {{"X-Request-Id", "my-id-7"}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/event-stream");
  EXPECT_NE(res->body.find(": keep-alive\n\n"), std::string::npos) << res->body;
  const std::vector<std::string> events = SseData(res->body);
  ASSERT_EQ(events.size(), 4u + 2u + 1u) << res->body;  // 4 texts, finish, usage, [DONE]
  std::string text;
  for (size_t i = 0; i < 4; ++i) {
    const json chunk = json::parse(events[i]);
    EXPECT_EQ(chunk["object"], "text_completion");
    EXPECT_EQ(chunk["id"], "cmpl-my-id-7");
    EXPECT_TRUE(chunk["choices"][0]["finish_reason"].is_null());
    EXPECT_TRUE(chunk["usage"].is_null());
    text += chunk["choices"][0]["text"].get<std::string>();
  }
  EXPECT_EQ(text, "Hello, world!");
  const json last = json::parse(events[4]);
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  const json usage = json::parse(events[5]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 4);
  EXPECT_EQ(events[6], "[DONE]");
  EXPECT_EQ(router_.requests().at(0).request_id(), "my-id-7");
}

TEST_F(OpenAiHttpServerTest, ChatWholeAndStreamed) {
  StartServer();
  const json messages = {{{"role", "system"}, {"content", "Be kind."}},
                         {{"role", "user"}, {"content", {{{"type", "text"}, {"text", "Hi!"}}}}}};
  auto whole = Post("/v1/chat/completions", {{"messages", messages},
                                              {"max_completion_tokens", 9},
                                              {"chat_template_kwargs", {{"enable_thinking", true}}}});
  ASSERT_TRUE(whole);
  ASSERT_EQ(whole->status, 200) << whole->body;
  const json body = json::parse(whole->body);
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_TRUE(absl::StartsWith(body["id"].get<std::string>(), "chatcmpl-"));
  EXPECT_EQ(body["choices"][0]["message"], json({{"role", "assistant"}, {"content", "Hello, world!"}}));
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
  const auto request = router_.requests().at(0);
  ASSERT_EQ(request.chat().messages_size(), 2);
  EXPECT_EQ(request.chat().messages(1).content(), "Hi!");
  EXPECT_TRUE(request.chat().enable_thinking());
  EXPECT_EQ(request.stop().max_tokens(), 9);

  auto streamed = Post("/v1/chat/completions", {{"messages", messages}, {"stream", true}});
  ASSERT_TRUE(streamed);
  ASSERT_EQ(streamed->status, 200) << streamed->body;
  const std::vector<std::string> events = SseData(streamed->body);
  ASSERT_EQ(events.size(), 1u + 4u + 1u + 1u) << streamed->body;  // role, 4 texts, finish, [DONE]
  EXPECT_EQ(json::parse(events[0])["choices"][0]["delta"]["role"], "assistant");
  std::string content;
  for (size_t i = 1; i <= 4; ++i) {
    const json chunk = json::parse(events[i]);
    EXPECT_EQ(chunk["object"], "chat.completion.chunk");
    content += chunk["choices"][0]["delta"]["content"].get<std::string>();
  }
  EXPECT_EQ(content, "Hello, world!");
  EXPECT_EQ(json::parse(events[5])["choices"][0]["finish_reason"], "stop");
  EXPECT_FALSE(json::parse(events[5]).contains("usage"));
  EXPECT_EQ(events[6], "[DONE]");
}

TEST_F(OpenAiHttpServerTest, RequestErrorsAreOpenAiErrors) {
  OpenAiServerOptions options;
  options.max_body_bytes = 1024;
  StartServer(options);

  auto bad_json = client_->Post("/v1/completions", "{\"prompt\": ", "application/json");
  ASSERT_TRUE(bad_json);
  EXPECT_EQ(bad_json->status, 400);
  json error = json::parse(bad_json->body)["error"];
  EXPECT_EQ(error["type"], "invalid_request_error");
  EXPECT_NE(error["message"].get<std::string>().find("not valid JSON"), std::string::npos) << error;

  auto n2 = Post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"n", 2}});
  ASSERT_TRUE(n2);
  EXPECT_EQ(n2->status, 400);
  EXPECT_EQ(json::parse(n2->body)["error"]["param"], "n");

  auto wrong_type = Post("/v1/completions", {{"prompt", "x"}, {"max_tokens", "many"}});
  ASSERT_TRUE(wrong_type);
  EXPECT_EQ(wrong_type->status, 400);
  EXPECT_EQ(json::parse(wrong_type->body)["error"]["param"], "max_tokens");

  auto wrong_model = Post("/v1/completions", {{"model", "other"}, {"prompt", "x"}});
  ASSERT_TRUE(wrong_model);
  EXPECT_EQ(wrong_model->status, 404);

  auto unknown_route = client_->Get("/v2/everything");
  ASSERT_TRUE(unknown_route);
  EXPECT_EQ(unknown_route->status, 404);
  EXPECT_NE(json::parse(unknown_route->body)["error"]["message"].get<std::string>().find("/v1/completions"),
            std::string::npos);

  auto wrong_method = client_->Get("/v1/completions");
  ASSERT_TRUE(wrong_method);
  EXPECT_EQ(wrong_method->status, 405);
  EXPECT_EQ(wrong_method->get_header_value("Allow"), "POST");

  auto too_large = Post("/v1/completions", {{"prompt", std::string(2000, 'a')}});
  ASSERT_TRUE(too_large);
  EXPECT_EQ(too_large->status, 413);
  EXPECT_EQ(json::parse(too_large->body)["error"]["type"], "invalid_request_error");

  auto bad_request_id = Post("/v1/completions", {{"prompt", "x"}}, {{"X-Request-Id", "has space"}});
  ASSERT_TRUE(bad_request_id);
  EXPECT_EQ(bad_request_id->status, 400);

  EXPECT_TRUE(router_.requests().empty()) << "bad requests must not reach the router";
}

TEST_F(OpenAiHttpServerTest, RouterRefusalsMapToHttpStatus) {
  StartServer();
  const std::vector<std::pair<absl::Status, int>> cases = {
      {absl::UnavailableError("no decode worker is READY"), 503},
      {absl::FailedPreconditionError("asyncspade needs a READY selector"), 409},
      {absl::ResourceExhaustedError("queue full"), 429},
      {absl::InvalidArgumentError("prompt too long"), 400},
      {absl::InternalError("bug"), 500},
  };
  for (const auto& [status, http_status] : cases) {
    FakeScript script;
    script.start_error = status;
    router_.SetScript(script);
    for (bool stream : {false, true}) {
      auto res = Post("/v1/completions", {{"prompt", "x"}, {"stream", stream}});
      ASSERT_TRUE(res);
      EXPECT_EQ(res->status, http_status) << status;
      EXPECT_EQ(json::parse(res->body)["error"]["message"], std::string(status.message()));
    }
  }
}

TEST_F(OpenAiHttpServerTest, FailureMidStream) {
  StartServer();
  FakeScript script;
  script.end_error = absl::UnavailableError("decode worker decode-0 went away mid-stream");
  router_.SetScript(script);

  auto whole = Post("/v1/completions", {{"prompt", "x"}});
  ASSERT_TRUE(whole);
  EXPECT_EQ(whole->status, 503);
  EXPECT_NE(whole->body.find("decode-0 went away"), std::string::npos);

  auto streamed = Post("/v1/completions", {{"prompt", "x"}, {"stream", true}});
  ASSERT_TRUE(streamed);
  EXPECT_EQ(streamed->status, 200);  // committed before the failure
  const std::vector<std::string> events = SseData(streamed->body);
  ASSERT_EQ(events.size(), 4u + 1u + 1u) << streamed->body;
  const json error = json::parse(events[4]);
  EXPECT_EQ(error["error"]["type"], "service_unavailable_error");
  EXPECT_NE(error["error"]["message"].get<std::string>().find("decode-0 went away"), std::string::npos);
  EXPECT_EQ(events[5], "[DONE]");
}

TEST_F(OpenAiHttpServerTest, ClientDisconnectMidStreamCancelsTheCall) {
  StartServer();
  FakeScript script;
  script.chunks = {"first", "second"};
  script.hang_after_chunks = true;  // like a worker still decoding
  router_.SetScript(script);
  const int fd = ConnectAndSend("/v1/completions", json({{"prompt", "x"}, {"stream", true}}).dump());
  const std::string received = ReadUntil(fd, "data: ", 2);
  EXPECT_NE(received.find("second"), std::string::npos) << received;
  EXPECT_EQ(router_.cancels(), 0);
  close(fd);
  EXPECT_TRUE(WaitFor([&] { return router_.cancels() == 1; })) << "the upstream call was not cancelled";
  // The cancelled request is counted as aborted.
  EXPECT_TRUE(WaitFor([&] {
    return metrics_->Render().find("asyncspade_requests_total{finish_reason=\"aborted\",api=\"http\"} 1") !=
           std::string::npos;
  })) << metrics_->Render();
}

TEST_F(OpenAiHttpServerTest, StopCancelsStreamsInFlight) {
  StartServer();
  FakeScript script;
  script.chunks = {"only"};
  script.hang_after_chunks = true;
  router_.SetScript(script);
  const int fd = ConnectAndSend("/v1/chat/completions",
                                json({{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"stream", true}}).dump());
  ReadUntil(fd, "only", 1);
  const absl::Time before = absl::Now();
  server_->Stop();
  EXPECT_LT(absl::Now() - before, absl::Seconds(10));
  EXPECT_EQ(router_.cancels(), 1);
  const std::string rest = ReadUntil(fd, "[DONE]", 1);
  EXPECT_NE(rest.find("\"finish_reason\":\"abort\""), std::string::npos) << rest;
  close(fd);
  server_->Stop();  // idempotent
}

TEST_F(OpenAiHttpServerTest, HealthFollowsTheRouter) {
  StartServer();
  router_.SetServing(false);
  auto down = client_->Get("/health");
  ASSERT_TRUE(down);
  EXPECT_EQ(down->status, 503);
  const json body = json::parse(down->body);
  EXPECT_EQ(body["status"], "not_serving");
  EXPECT_FALSE(body["message"].get<std::string>().empty());
  router_.SetServing(true);
  auto up = client_->Get("/health");
  ASSERT_TRUE(up);
  EXPECT_EQ(up->status, 200);
  EXPECT_EQ(json::parse(up->body)["status"], "serving");
}

TEST_F(OpenAiHttpServerTest, ModelsListsTheServedModel) {
  StartServer();
  auto res = client_->Get("/v1/models");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  const json body = json::parse(res->body);
  EXPECT_EQ(body["object"], "list");
  ASSERT_EQ(body["data"].size(), 1u);
  EXPECT_EQ(body["data"][0]["id"], "fake-model");
  EXPECT_EQ(body["data"][0]["object"], "model");
  EXPECT_EQ(body["data"][0]["max_model_len"], 4096);
  auto one = client_->Get("/v1/models/fake-model");
  ASSERT_TRUE(one);
  EXPECT_EQ(one->status, 200);
  auto other = client_->Get("/v1/models/gpt-4");
  ASSERT_TRUE(other);
  EXPECT_EQ(other->status, 404);
}

TEST_F(OpenAiHttpServerTest, MetricsCountRequests) {
  StartServer();
  ASSERT_EQ(Post("/v1/completions", {{"prompt", "x"}})->status, 200);
  ASSERT_EQ(Post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"stream", true}})
                ->status,
            200);
  ASSERT_EQ(Post("/v1/completions", {{"prompt", "x"}, {"n", 3}})->status, 400);
  FakeScript refused;
  refused.start_error = absl::UnavailableError("no worker");
  router_.SetScript(refused);
  ASSERT_EQ(Post("/v1/completions", {{"prompt", "x"}})->status, 503);

  auto res = client_->Get("/metrics");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  const std::string& text = res->body;
  for (const std::string expected : {
           "asyncspade_requests_total{finish_reason=\"stop\",api=\"http\"} 2\n",
           "asyncspade_requests_rejected_total{reason=\"invalid_argument\"} 1\n",
           "asyncspade_requests_rejected_total{reason=\"unavailable\"} 1\n",
           "asyncspade_prompt_tokens_total 10\n",
           "asyncspade_generation_tokens_total 8\n",
           "asyncspade_requests_in_flight 0\n",
           // 4 chunks per request: 3 gaps each
           "asyncspade_inter_token_latency_seconds_count 6\n",
           "asyncspade_e2e_request_latency_seconds_count 2\n",
           "asyncspade_time_to_first_token_seconds_count 2\n",
       }) {
    EXPECT_NE(text.find(expected), std::string::npos) << "missing: " << expected << "in:\n" << text;
  }
}

TEST_F(OpenAiHttpServerTest, ManyConcurrentStreamsEachGetTheirWholeAnswer) {
  StartServer();
  FakeScript script;
  script.chunks = std::vector<std::string>(20, "ab");
  script.chunk_delay = absl::Milliseconds(5);
  router_.SetScript(script);
  constexpr int kClients = 64;
  std::vector<std::string> bodies(kClients);
  std::vector<int> statuses(kClients, 0);
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      httplib::Client client("127.0.0.1", port_);
      client.set_read_timeout(60, 0);
      const bool chat = i % 2 == 0;
      const json body = chat ? json{{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"stream", true}}
                             : json{{"prompt", "x"}, {"stream", true}};
      auto res = client.Post(chat ? "/v1/chat/completions" : "/v1/completions", body.dump(), "application/json");
      if (res) {
        statuses[i] = res->status;
        bodies[i] = res->body;
      } else {
        bodies[i] = httplib::to_string(res.error());
      }
    });
  }
  for (auto& client : clients) client.join();
  std::string expected_text;
  for (const std::string& chunk : script.chunks) expected_text += chunk;
  for (int i = 0; i < kClients; ++i) {
    EXPECT_EQ(statuses[i], 200) << "client " << i << ": " << bodies[i];
    if (statuses[i] != 200) continue;
    const std::vector<std::string> events = SseData(bodies[i]);
    ASSERT_FALSE(events.empty());
    EXPECT_EQ(events.back(), "[DONE]") << "client " << i;
    std::string text;
    for (size_t e = 0; e + 1 < events.size(); ++e) {
      const json chunk = json::parse(events[e]);
      const json& choice = chunk["choices"][0];
      if (choice.contains("text")) text += choice["text"].get<std::string>();
      if (choice.contains("delta") && choice["delta"].contains("content")) {
        text += choice["delta"]["content"].get<std::string>();
      }
    }
    EXPECT_EQ(text, expected_text) << "client " << i;
  }
  const std::string finished =
      absl::StrCat("asyncspade_requests_total{finish_reason=\"stop\",api=\"http\"} ", kClients, "\n");
  EXPECT_TRUE(Contains(metrics_->Render(), finished)) << metrics_->Render();
}

TEST_F(OpenAiHttpServerTest, PortInUseIsAClearError) {
  StartServer();
  OpenAiServerOptions options;
  options.port = port_;
  OpenAiHttpServer second(&router_, metrics_.get(), options);
  absl::StatusOr<int> port = second.Start();
  EXPECT_EQ(port.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(port.status().message().find(absl::StrCat(port_)), std::string::npos) << port.status();
}

}  // namespace
}  // namespace asyncspade::controller::http
