// Where tests find their data and where they write: the shared/ folder (models, tokenizers), the
// checkout (fixtures), the build's bin/, and scratch directories. Every location is a compile-time
// default that a same-named environment variable overrides (ASYNCSPADE_SHARED_DIR,
// ASYNCSPADE_SOURCE_DIR, ASYNCSPADE_BINARY_DIR), so the binaries also run on a GPU machine.
#pragma once

#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

namespace asyncspade::testing {

// The environment variable's value, or `fallback` when it is unset or empty.
inline std::string EnvOr(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? std::string(value) : fallback;
}

inline std::string SharedDir() { return EnvOr("ASYNCSPADE_SHARED_DIR", ASYNCSPADE_SHARED_DIR); }
inline std::string SourceDir() { return EnvOr("ASYNCSPADE_SOURCE_DIR", ASYNCSPADE_SOURCE_DIR); }
inline std::string BinaryDir() { return EnvOr("ASYNCSPADE_BINARY_DIR", ASYNCSPADE_BINARY_DIR) + "/bin"; }

// A fresh directory under $TMPDIR (or /tmp), removed with its contents by the destructor unless
// ASYNCSPADE_KEEP_TEST_DIRS is set. Tests running in parallel never share one.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "asyncspade-test-XXXXXX").string();
    if (mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    if (!path_.empty() && std::getenv("ASYNCSPADE_KEEP_TEST_DIRS") == nullptr) {
      std::filesystem::remove_all(path_, ignored);
    }
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // The path of `name` in the directory.
  std::string File(const std::string& name) const { return (std::filesystem::path(path_) / name).string(); }
  // Writes `text` to `name` in the directory; returns its path.
  std::string Write(const std::string& name, const std::string& text) const {
    const std::string file = File(name);
    std::ofstream(file) << text;
    return file;
  }

 private:
  std::string path_;
};

}  // namespace asyncspade::testing
