#include "common/data_plane/file_rendezvous_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace asyncspade::data_plane {
namespace {

// File names stay well below NAME_MAX (255) even with the temporary-file suffix.
constexpr size_t kMaxFileNameLength = 180;

// FNV-1a: stable across processes and builds, unlike absl::Hash.
uint64_t StableHash(const std::string& text) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 0x100000001b3ull;
  }
  return hash;
}

std::string ErrnoText(int error) { return std::strerror(error); }

absl::Status WriteAll(int fd, const std::string& bytes, const std::string& path) {
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("writing rendezvous file ", path, ": ",
                                              ErrnoText(errno), "; check free disk space"));
    }
    written += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// Returns NOT_FOUND when the file does not exist (yet).
absl::StatusOr<std::string> ReadFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(path);
    return absl::PermissionDeniedError(
        absl::StrCat("opening rendezvous file ", path, ": ", ErrnoText(errno)));
  }
  std::string bytes;
  char chunk[4096];
  for (;;) {
    const ssize_t n = ::read(fd, chunk, sizeof(chunk));
    if (n < 0) {
      if (errno == EINTR) continue;
      const int error = errno;
      ::close(fd);
      return absl::InternalError(absl::StrCat("reading rendezvous file ", path, ": ",
                                              ErrnoText(error)));
    }
    if (n == 0) break;
    bytes.append(chunk, static_cast<size_t>(n));
  }
  ::close(fd);
  return bytes;
}

}  // namespace

absl::StatusOr<std::unique_ptr<FileRendezvousStore>> FileRendezvousStore::Open(
    const std::string& directory) {
  if (directory.empty()) {
    return absl::InvalidArgumentError("rendezvous store directory is empty; pass a directory path");
  }
  std::error_code error;
  std::filesystem::create_directories(directory, error);
  if (error || !std::filesystem::is_directory(directory, error)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rendezvous store directory ", directory, " cannot be created or is not a directory",
        error ? absl::StrCat(": ", error.message()) : std::string()));
  }
  return std::unique_ptr<FileRendezvousStore>(new FileRendezvousStore(directory));
}

std::string FileRendezvousStore::PathForKey(const std::string& key) const {
  std::string name;
  for (unsigned char c : key) {
    const bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                       c == '.' || c == '_' || c == '-';
    if (plain) {
      name.push_back(static_cast<char>(c));
    } else {
      absl::StrAppendFormat(&name, "%%%02X", c);
    }
  }
  // "." and ".." are directory entries, not files; a leading '.' also hides temporaries.
  if (!name.empty() && name[0] == '.') name = "%2E" + name.substr(1);
  if (name.size() > kMaxFileNameLength) {
    name = absl::StrFormat("%s~%016x", name.substr(0, kMaxFileNameLength - 17), StableHash(key));
  }
  return absl::StrCat(directory_, "/", name);
}

absl::Status FileRendezvousStore::Set(const std::string& key, const std::string& value) {
  static std::atomic<uint64_t> temporary_counter{0};
  const std::string path = PathForKey(key);
  // Readers never see a half-written value: they only ever open the final name, which rename(2)
  // replaces atomically.
  const std::string temporary = absl::StrCat(directory_, "/.tmp-", ::getpid(), "-",
                                             temporary_counter.fetch_add(1));
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::PermissionDeniedError(absl::StrCat("creating rendezvous file ", temporary, ": ",
                                                    ErrnoText(errno),
                                                    "; check the store directory's permissions"));
  }
  absl::Status written = WriteAll(fd, value, temporary);
  ::close(fd);
  if (written.ok() && ::rename(temporary.c_str(), path.c_str()) != 0) {
    written = absl::InternalError(
        absl::StrCat("renaming ", temporary, " to ", path, ": ", ErrnoText(errno)));
  }
  if (!written.ok()) ::unlink(temporary.c_str());
  return written;
}

absl::StatusOr<std::string> FileRendezvousStore::Get(const std::string& key,
                                                     absl::Duration timeout) {
  const std::string path = PathForKey(key);
  const absl::Time deadline = absl::Now() + timeout;
  absl::Duration backoff = absl::Microseconds(200);
  for (;;) {
    absl::StatusOr<std::string> value = ReadFile(path);
    if (value.ok() || !absl::IsNotFound(value.status())) return value;
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "rendezvous key '", key, "' (file ", path, ") was not set within ",
          absl::FormatDuration(timeout),
          "; is the peer process running and using the same store, channel id and epoch?"));
    }
    std::this_thread::sleep_for(absl::ToChronoMicroseconds(std::min(backoff, deadline - now)));
    backoff = std::min(backoff * 2, absl::Milliseconds(20));
  }
}

absl::Status FileRendezvousStore::Delete(const std::string& key) {
  const std::string path = PathForKey(key);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return absl::PermissionDeniedError(
        absl::StrCat("deleting rendezvous file ", path, ": ", ErrnoText(errno)));
  }
  return absl::OkStatus();
}

}  // namespace asyncspade::data_plane
