#include "atomic_output.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <random>

namespace tessera::overlay::detail {
namespace {

std::string dir_of(const std::string& path) {
  const auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

Result<void> fsync_path(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return fail(Error::sys("cannot open '" + path + "' to sync it"));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return fail(Error::sys("cannot sync '" + path + "'", err));
  return {};
}

}  // namespace

Result<AtomicOutput> AtomicOutput::create(const std::string& final_path) {
  if (final_path.empty()) return fail(Errc::invalid_argument, "output: empty file name");
  std::random_device rd;
  char suffix[64];
  std::snprintf(suffix, sizeof suffix, ".tmp-%ld-%08x%08x", static_cast<long>(::getpid()), rd(), rd());
  AtomicOutput o;
  o.final_ = final_path;
  const std::string temp = final_path + suffix;
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return fail(Error::sys("cannot create '" + temp + "' (temp file of '" + final_path + "')"));
  ::close(fd);
  o.temp_ = temp;
  return o;
}

AtomicOutput::AtomicOutput(AtomicOutput&& o) noexcept : final_(std::move(o.final_)), temp_(std::move(o.temp_)) {
  o.temp_.clear();
}

AtomicOutput& AtomicOutput::operator=(AtomicOutput&& o) noexcept {
  if (this != &o) {
    discard();
    final_ = std::move(o.final_);
    temp_ = std::move(o.temp_);
    o.temp_.clear();
  }
  return *this;
}

AtomicOutput::~AtomicOutput() {
  discard();
}

void AtomicOutput::discard() noexcept {
  if (!temp_.empty()) ::unlink(temp_.c_str());
  temp_.clear();
}

Result<void> AtomicOutput::commit() {
  if (temp_.empty()) return fail(Errc::invalid_argument, "output '" + final_ + "': nothing to commit");
  auto s = fsync_path(temp_, O_RDONLY);
  if (!s) return s;
  if (::rename(temp_.c_str(), final_.c_str()) != 0)
    return fail(Error::sys("cannot rename '" + temp_ + "' to '" + final_ + "'"));
  temp_.clear();
  // The rename is durable once the directory entry is.
  return fsync_path(dir_of(final_), O_RDONLY | O_DIRECTORY);
}

}  // namespace tessera::overlay::detail
