// Test worker for the SDK tests (not an example):
//   op 0 (where):  answers uint64[3] = {input offset in the arena, output offset in
//                  the arena, sum of the input bytes} — the zero-copy proof.
//   op 1 (noisy):  printf()s, std::cout <<s, puts()s and write(1)s from the handler,
//                  then answers like op 0. None of it may reach the protocol.
//   op 2 (throw):  throws; only this tile fails.
//   op 5 (hold):   allocates its output, then sleeps 30 s before publishing (kill -9 target).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>

#include <tessera/runtime.hpp>

namespace {

void where(tessera::Worker& w, tessera::Tile& t) {
  tessera::OutputBlock out;
  if (w.alloc_output(tessera::DType::UInt64, {3}, out) != tessera::AllocStatus::ok) {
    w.fail(t, tessera::TileStatus::NoSpace, "no output block free");
    return;
  }
  std::uint64_t sum = 0;
  for (std::byte b : t.input().bytes()) sum += static_cast<std::uint8_t>(b);
  auto o = out.as<std::uint64_t>();
  const std::byte* base = w.arena().base();
  o[0] = static_cast<std::uint64_t>(t.input().data() - base);
  o[1] = static_cast<std::uint64_t>(out.view().data() - base);
  o[2] = sum;
  (void)w.publish(t, out);
}

}  // namespace

int main() {
  return tessera::serve([](tessera::Worker& w, tessera::Tile& t) {
    switch (t.op()) {
      case 0: where(w, t); break;
      case 1: {
        // Deliberately no trailing newline on some of them: a partial line must not merge.
        std::printf("NOISE-printf seq=%llu", static_cast<unsigned long long>(t.seq()));
        std::fflush(stdout);
        std::cout << "NOISE-cout {\"task\":\"fake\",\"responseType\":\"COMPLETION\"}" << std::endl;
        std::puts("NOISE-puts");
        std::fflush(stdout);
        (void)!::write(1, "NOISE-write", 11);
        where(w, t);
        break;
      }
      case 2: throw std::runtime_error("op 2 always throws (tile " + std::to_string(t.seq()) + ")");
      case 5: {
        tessera::OutputBlock out;
        if (w.alloc_output(tessera::DType::UInt8, {1}, out) != tessera::AllocStatus::ok) {
          w.fail(t, tessera::TileStatus::NoSpace, "no output block free");
          return;
        }
        for (int i = 0; i < 3000 && !w.stop_requested(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
        (void)w.publish(t, out);
        break;
      }
      default: w.fail(t, tessera::TileStatus::Unsupported, "unknown op " + std::to_string(t.op()));
    }
  });
}
