// A RendezvousStore in a directory that every participating process can read and write: one file
// per key, written atomically (temporary file + rename). For tests that span processes on one
// machine and for single-node deployments without a controller store.
#pragma once

#include <memory>
#include <string>

#include "common/data_plane/rendezvous_store.h"

namespace asyncspade::data_plane {

class FileRendezvousStore : public RendezvousStore {
 public:
  // Creates `directory` (and its parents) when missing.
  static absl::StatusOr<std::unique_ptr<FileRendezvousStore>> Open(const std::string& directory);

  absl::Status Set(const std::string& key, const std::string& value) override;
  absl::StatusOr<std::string> Get(const std::string& key, absl::Duration timeout) override;
  absl::Status Delete(const std::string& key) override;

  const std::string& directory() const { return directory_; }
  // The file that holds `key` (keys are escaped into one file name, so '/' in a key is fine).
  std::string PathForKey(const std::string& key) const;

 private:
  explicit FileRendezvousStore(std::string directory) : directory_(std::move(directory)) {}

  std::string directory_;
};

}  // namespace asyncspade::data_plane
