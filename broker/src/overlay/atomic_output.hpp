// One output file written atomically: the bytes go to a unique temp name in the
// final file's directory ("<final>.tmp-<pid>-<random>", so that no viewer takes it
// for a finished file), commit() fsyncs it and renames it into place, and the
// destructor removes the temp file when commit() was never reached.
#pragma once

#include <string>

#include <tessera/result.hpp>

namespace tessera::overlay::detail {

class AtomicOutput {
 public:
  AtomicOutput() = default;
  // Creates the (empty) temp file next to `final_path` with O_EXCL; the error names the file.
  static Result<AtomicOutput> create(const std::string& final_path);
  AtomicOutput(AtomicOutput&& o) noexcept;
  AtomicOutput& operator=(AtomicOutput&& o) noexcept;
  AtomicOutput(const AtomicOutput&) = delete;
  AtomicOutput& operator=(const AtomicOutput&) = delete;
  ~AtomicOutput();

  bool active() const noexcept { return !temp_.empty(); }
  const std::string& final_path() const noexcept { return final_; }
  const std::string& temp_path() const noexcept { return temp_; }
  // fsync(temp), rename(temp, final), fsync(directory). After it, the destructor leaves the file.
  Result<void> commit();
  // Removes the temp file now (idempotent).
  void discard() noexcept;

 private:
  std::string final_, temp_;
};

}  // namespace tessera::overlay::detail
