#include "services/decode_worker/service/decode_worker.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/config/random_weight_presets.h"
#include "common/control/control_plane_store.h"
#include "common/status.h"
#include "glog/logging.h"
#include "grpcpp/server_builder.h"
#include "services/decode_worker/model/model_runner_factory.h"
#include "services/decode_worker/policy/sparse_attention_stage.h"

namespace asyncspade {
namespace {

selector::v1::Hello HelloFor(const ModelConfig& model, const SparsePolicyConfig& sparse, int max_seq_len) {
  selector::v1::Hello hello;
  hello.set_num_layers(model.num_layers);
  hello.set_num_heads(model.num_heads);
  hello.set_num_kv_heads(model.num_kv_heads);
  hello.set_head_dim(model.head_dim);
  hello.set_budget(sparse.budget);
  hello.set_sinks(sparse.sinks);
  hello.set_recent(sparse.recent);
  switch (sparse.aggregation) {
    case ScoreAggregation::kSum: hello.set_aggregation(selector::v1::SCORE_AGGREGATION_SUM); break;
    case ScoreAggregation::kMax: hello.set_aggregation(selector::v1::SCORE_AGGREGATION_MAX); break;
    case ScoreAggregation::kSoftmaxSum: hello.set_aggregation(selector::v1::SCORE_AGGREGATION_SOFTMAX_SUM); break;
  }
  hello.set_dtype(selector::v1::TENSOR_DTYPE_F32);
  hello.set_max_seq_len(max_seq_len);
  return hello;
}

std::string HostPort(const std::string& host, int port) {
  return host.find(':') != std::string::npos ? absl::StrCat("[", host, "]:", port) : absl::StrCat(host, ":", port);
}

}  // namespace

bool EngineKvKeyReader::ReadKeys(int64_t sequence_id, int layer, int32_t start, int32_t num_tokens, float* out) const {
  if (engine_ == nullptr) return false;
  const absl::Status read =
      ReadCachedKeys(engine_->runner(), engine_->kv_cache().BlockTable(sequence_id), layer, start, num_tokens, out);
  if (!read.ok()) VLOG(1) << "sequence " << sequence_id << ": " << read;
  return read.ok();
}

absl::StatusOr<std::unique_ptr<DecodeWorker>> DecodeWorker::Create(DecodeWorkerOptions options) {
  if (options.controller_address.empty()) {
    return absl::InvalidArgumentError("--controller HOST:PORT is required: the decode worker registers there");
  }
  if (options.member_id.empty()) return absl::InvalidArgumentError("--id is required, e.g. --id decode-worker-0");
  absl::StatusOr<std::vector<int>> gpus = ParseRunnerDevices(options.devices);
  if (!gpus.ok()) return Annotate(gpus.status(), "--devices");
  if (!gpus->empty() && !ModelRunnerFactoryHasCuda()) {
    return absl::UnimplementedError(absl::StrCat("--devices ", absl::StrJoin(options.devices, ","),
                                                 ": this build has no CUDA; use --devices cpu"));
  }
  const DeploymentConfig& deployment = options.deployment;
  if (gpus->empty() && deployment.model.random_weights.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        deployment.source, ": model.random_weights (", *deployment.model.random_weights,
        ") is for GPU benchmarks; a CPU decode worker needs a checkpoint in model.path"));
  }
  if (gpus->empty() && !deployment.decode_workers.kv_cache.blocks.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        deployment.source, ": decode_workers.kv_cache.blocks is required on the CPU (memory_fraction sizes GPU "
        "memory); set e.g. blocks: 512"));
  }
  absl::StatusOr<ModelConfig> model = deployment.model.random_weights.has_value()
                                          ? RandomWeightPresetModelConfig(*deployment.model.random_weights)
                                          : LoadModelConfig(deployment.model.path);
  if (!model.ok()) {
    return Annotate(model.status(), absl::StrCat(deployment.source, deployment.model.random_weights.has_value()
                                                                        ? ": model.random_weights"
                                                                        : ": model.path"));
  }
  ASSIGN_OR_RETURN(ResolvedDeployment resolved, ResolveDeploymentForModel(deployment, *model));
  return std::unique_ptr<DecodeWorker>(new DecodeWorker(std::move(options), *std::move(model), resolved.max_seq_len));
}

DecodeWorker::DecodeWorker(DecodeWorkerOptions options, ModelConfig model_config, int max_seq_len)
    : options_(std::move(options)), model_config_(std::move(model_config)), max_seq_len_(max_seq_len) {}

DecodeWorker::~DecodeWorker() { Shutdown(absl::ZeroDuration()); }

std::string DecodeWorker::address() const { return HostPort(options_.host, port_); }

absl::Status DecodeWorker::Start() {
  DecodeWorkerServiceHooks hooks;
  hooks.apply_assignment = [this](const control::v1::Assignment& assignment) { return ApplyAssignment(assignment); };
  hooks.drain = [this] { Drain("was asked to drain by the controller"); };
  service_ = std::make_unique<DecodeWorkerServiceImpl>(options_.member_id, std::move(hooks));

  grpc::ServerBuilder builder;
  builder.AddListeningPort(HostPort(options_.host, options_.port), grpc::InsecureServerCredentials(), &port_);
  builder.RegisterService(service_.get());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port_ == 0) {
    return absl::UnavailableError(absl::StrCat("decode worker ", options_.member_id, ": cannot listen on ",
                                               HostPort(options_.host, options_.port),
                                               "; is the port free and the address local? (--host, --port)"));
  }
  store_ = std::make_unique<ControlPlaneRendezvousStore>(options_.controller_address);

  MemberOptions member;
  member.controller_address = options_.controller_address;
  member.role = control::v1::ROLE_DECODE_WORKER;
  member.member_id = options_.member_id;
  member.address = address();
  member.devices = options_.devices;
  member.register_timeout = absl::Seconds(options_.deployment.lifecycle.startup_timeout_s);
  member_ = std::make_unique<MemberClient>(member, [this] { return CurrentLoad(); });
  if (absl::Status registered = member_->Register(); !registered.ok()) {
    server_->Shutdown(absl::ToChronoTime(absl::Now()));
    member_.reset();
    return registered;
  }
  member_->SetState(control::v1::MEMBER_STATE_STARTING);
  member_->StartHeartbeats();
  LOG(INFO) << "decode worker " << options_.member_id << " serving on " << address() << "; loading "
            << options_.deployment.model.path;

  if (absl::Status loaded = LoadAndServe(); !loaded.ok()) {
    member_->Stop(/*deregister=*/true);
    server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
    return loaded;
  }
  member_->SetState(control::v1::MEMBER_STATE_READY);
  watcher_ = std::thread([this] { WatchMembership(); });
  LOG(INFO) << "decode worker " << options_.member_id << " READY (" << model_config_.architecture << ", "
            << model_config_.num_layers << " layers, max_seq_len " << max_seq_len_ << ")";
  return absl::OkStatus();
}

absl::Status DecodeWorker::LoadAndServe() {
  const DeploymentConfig& deployment = options_.deployment;
  if (!deployment.model.tokenizer.empty()) {
    auto tokenizer = Tokenizer::FromModelDir(deployment.model.tokenizer);
    if (!tokenizer.ok()) {
      return Annotate(tokenizer.status(), absl::StrCat("decode worker ", options_.member_id,
                                                       ": loading the tokenizer (model.tokenizer '",
                                                       deployment.model.tokenizer, "')"));
    }
    tokenizer_ = std::move(tokenizer).value();
    // A model without a chat template still serves text and token ids.
    auto chat_template = ChatTemplate::FromModelDir(deployment.model.tokenizer);
    if (chat_template.ok()) chat_template_ = std::move(chat_template).value();
  }

  RemoteSelectorPoolOptions pool_options;
  pool_options.worker_id = options_.member_id;
  pool_options.num_layers = model_config_.num_layers;
  pool_options.hello = HelloFor(model_config_, deployment.sparse, max_seq_len_);
  pool_options.store = store_.get();
  pool_options.host = options_.host;
  pool_options.connect_timeout = options_.connect_timeout;
  pool_options.peer_timeout = options_.peer_timeout;
  pool_options.key_reader = &key_reader_;
  pool_options.run_on_decode_loop = [this](std::function<void()> task) {
    EngineLoop* loop = loop_.get();
    if (loop != nullptr) loop->Post([task = std::move(task)](GenerationEngine&) { task(); });
  };
  pool_ = std::make_unique<RemoteSelectorPool>(std::move(pool_options));

  SparseAttentionStageOptions stage_options;
  stage_options.default_config = deployment.sparse;
  stage_options.selector_pool = pool_.get();
  stage_options.dense_below_threshold = options_.sparse_dense_below_threshold;
  auto stage = SparseAttentionStage::Create(model_config_, std::move(stage_options));
  if (!stage.ok()) return Annotate(stage.status(), absl::StrCat(deployment.source, ": sparse"));
  ModelRunnerFactoryOptions runner_options;
  runner_options.max_seq_len = max_seq_len_;
  runner_options.cpu_attention = *std::move(stage);
  auto runner = CreateModelRunner(deployment, options_.devices, std::move(runner_options));
  if (!runner.ok()) {
    return Annotate(runner.status(), absl::StrCat("decode worker ", options_.member_id, ": loading the model (",
                                                  deployment.source, ")"));
  }
  // Before the first request: the CUDA runner captures its decode graphs (the CPU runner has
  // nothing to do), so no request pays for a capture.
  RETURN_IF_ERROR(Annotate((*runner)->Warmup(),
                           absl::StrCat("decode worker ", options_.member_id, ": warming up the model runner")));

  GenerationEngineOptions engine_options;
  engine_options.max_batch_size = deployment.decode_workers.max_batch_size;
  engine_options.max_batch_tokens = deployment.decode_workers.max_prefill_tokens;
  engine_options.max_sequence_length = max_seq_len_;
  engine_options.sparse_default = deployment.sparse;
  auto engine = GenerationEngine::Create(std::move(runner).value(), engine_options, tokenizer_.get());
  if (!engine.ok()) return Annotate(engine.status(), "creating the generation engine");
  key_reader_.Bind(engine->get());

  EngineLoopOptions loop_options;
  loop_options.worker_id = options_.member_id;
  loop_options.after_step = [this](GenerationEngine&) {
    pool_->Poll();
    if (options_.after_step_for_tests) options_.after_step_for_tests(*pool_);
  };
  loop_ = std::make_unique<EngineLoop>(std::move(engine).value(), tokenizer_.get(), std::move(loop_options));
  loop_->Start();

  RequestTranslationContext context;
  context.tokenizer = tokenizer_.get();
  context.chat_template = chat_template_.has_value() ? &*chat_template_ : nullptr;
  context.vocab_size = model_config_.vocab_size;
  context.max_sequence_length = max_seq_len_;
  context.sparse_default = deployment.sparse;
  service_->Serve(loop_.get(), std::move(context));

  std::optional<control::v1::Assignment> pending;
  {
    absl::MutexLock lock(&mutex_);
    pool_ready_ = true;
    pending.swap(pending_assignment_);
  }
  if (pending.has_value()) RETURN_IF_ERROR(ApplyAssignment(*pending));
  return absl::OkStatus();
}

absl::Status DecodeWorker::ApplyAssignment(const control::v1::Assignment& assignment) {
  {
    absl::MutexLock lock(&mutex_);
    if (!pool_ready_) {
      // Still loading: applied as soon as the pool exists.
      pending_assignment_ = assignment;
      return absl::OkStatus();
    }
  }
  RETURN_IF_ERROR(pool_->ApplyAssignment(assignment));
  if (member_ != nullptr) member_->SetAppliedAssignmentVersion(assignment.version());
  return absl::OkStatus();
}

void DecodeWorker::Drain(const std::string& why) {
  if (draining_.exchange(true)) return;
  LOG(INFO) << "decode worker " << options_.member_id << " " << why << ": no new requests; "
            << (loop_ != nullptr ? loop_->active_requests() : 0) << " in flight finish";
  if (service_ != nullptr) service_->StopAccepting(why);
  if (member_ != nullptr) member_->SetState(control::v1::MEMBER_STATE_DRAINING);
}

void DecodeWorker::WatchMembership() {
  while (!stop_watching_.WaitForNotificationWithTimeout(absl::Milliseconds(100))) {
    if (member_->drain_requested()) Drain("was asked to drain by the controller");
  }
}

control::v1::Load DecodeWorker::CurrentLoad() const {
  control::v1::Load load;
  {
    absl::MutexLock lock(&mutex_);
    if (!pool_ready_) return load;
  }
  const EngineLoopLoad engine = loop_->load();
  load.set_running_requests(engine.running_requests);
  // Accepted requests the engine has not taken yet count as waiting too.
  load.set_waiting_requests(std::max(engine.waiting_requests, engine.active_requests - engine.running_requests));
  load.set_kv_cache_usage(engine.kv_cache_usage);
  load.set_kv_blocks_total(engine.kv_blocks_total);
  load.set_selector_lag_steps(engine.sparse.mean_selector_lag_steps());
  load.set_selector_stalls_total(engine.sparse.stale_selections);
  load.set_dense_fallbacks_total(engine.sparse.dense_fallbacks);
  return load;
}

void DecodeWorker::Shutdown(absl::Duration drain_timeout) {
  if (shut_down_.exchange(true)) return;
  Drain("is shutting down");
  if (loop_ != nullptr) {
    const absl::Time deadline = absl::Now() + drain_timeout;
    while (loop_->active_requests() > 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
    // Ends what is left: each stream gets its final message (ABORTED).
    loop_->Stop();
  }
  if (pool_ != nullptr) pool_->Shutdown();
  stop_watching_.Notify();
  if (watcher_.joinable()) watcher_.join();
  if (server_ != nullptr) server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  if (member_ != nullptr) member_->Stop(/*deregister=*/true);
  LOG(INFO) << "decode worker " << options_.member_id << " stopped";
}

}  // namespace asyncspade
