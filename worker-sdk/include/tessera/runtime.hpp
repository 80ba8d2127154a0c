// Worker runtime: the process-level part of a Tessera worker.
//  - Protects the protocol: the Appose JSON lines go to a private duplicate of fd 1,
//    and fd 1 itself is pointed at stderr, so printf/std::cout/print() in user code or
//    libraries can never corrupt or merge a protocol line.
//  - Runs the Appose protocol loop on its own thread: EXECUTE/CANCEL in,
//    LAUNCH/UPDATE/COMPLETION/CANCELATION/FAILURE out, one whole line per write(2);
//    blank or malformed request lines are logged to stderr and skipped.
//  - Attaches the arena (Worker::from_env) and reports readiness only when that worked
//    and every init step ran.
//
//   int main() {
//     return tessera::serve([](tessera::Worker& w, tessera::Tile& t) { ... w.publish(t, out); });
//   }
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include <boost/json/object.hpp>

#include <tessera/worker.hpp>

namespace tessera {

// Result of an EXECUTE script handled by user code: outputs on success, or an error text.
using ScriptResult = Result<boost::json::object>;
using ScriptHandler = std::function<ScriptResult(const std::string& script, const boost::json::object& inputs)>;

struct RuntimeOptions {
  WorkerOptions worker{};
  // Scripts other than the built-in `tessera.*` ones (init steps such as "load model X").
  ScriptHandler on_script;
  // If false, a missing TESSERA_ARENA_FD is not fatal (Appose-only worker); tessera.ready fails.
  bool require_arena = true;
};

class WorkerRuntime {
 public:
  // Saves the protocol descriptor, redirects fd 1 to stderr, attaches the arena and
  // starts the protocol thread. Fails (with a message for stderr) if the arena is
  // required but cannot be attached.
  static Result<std::unique_ptr<WorkerRuntime>> start(RuntimeOptions opts = {});
  ~WorkerRuntime();

  Worker* worker() noexcept { return worker_.get(); }
  // True once stdin reached EOF, a stop was requested, or SIGTERM/SIGINT arrived.
  bool stopping() const noexcept;
  void request_stop() noexcept;
  // Waits for the protocol thread; returns the process exit code (0 after a clean EOF).
  int finish();

  // Writes one protocol line (thread-safe; one write(2) per line).
  void write_line(const std::string& line) noexcept;
  int protocol_fd() const noexcept { return proto_fd_; }

  struct State;

 private:
  WorkerRuntime() = default;
  std::unique_ptr<Worker> worker_;
  int proto_fd_ = -1;
  std::unique_ptr<State> state_;
};

// A tile handler answers the tile (publish/fail/cancel). An exception it throws
// fails that tile with the exception's message; the worker carries on.
using TileHandler = std::function<void(Worker&, Tile&)>;

struct ServeOptions {
  RuntimeOptions runtime{};
  std::size_t max_batch = 16;
  std::chrono::milliseconds take_timeout{100};
};

// The whole worker main loop. Returns the process exit code.
int serve(const TileHandler& handler, ServeOptions opts = {});

}  // namespace tessera
