#include "services/controller/member_channels.h"

#include "absl/time/clock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace asyncspade::controller {

std::shared_ptr<grpc::Channel> MemberChannels::Get(const std::string& address) {
  absl::MutexLock lock(&mutex_);
  std::shared_ptr<grpc::Channel>& channel = channels_[address];
  if (channel == nullptr) channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  return channel;
}

bool AddressAnswers(const std::string& address, absl::Duration timeout) {
  // A fresh channel: a cached one may be waiting out a reconnect backoff from an earlier failure.
  grpc::ChannelArguments args;
  args.SetInt("grpc.use_local_subchannel_pool", 1);
  std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  const auto deadline = absl::ToChronoTime(absl::Now() + timeout);
  grpc_connectivity_state state = channel->GetState(/*try_to_connect=*/true);
  while (true) {
    if (state == GRPC_CHANNEL_READY) return true;
    if (state == GRPC_CHANNEL_TRANSIENT_FAILURE || state == GRPC_CHANNEL_SHUTDOWN) return false;
    if (!channel->WaitForStateChange(state, deadline)) return true;  // undecided in time: assume alive
    state = channel->GetState(/*try_to_connect=*/true);
  }
}

}  // namespace asyncspade::controller
