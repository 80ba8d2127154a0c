// A client and a worker in one process, through the installed package only: the
// client submits a tile of known bytes, the worker answers with their sum, the
// client checks it.
#include <tessera/client.hpp>
#include <tessera/worker.hpp>

#include <unistd.h>

#include <cstdio>
#include <numeric>

int main() {
  using namespace std::chrono_literals;
  tessera::ClientOptions co;
  co.arena.classes = {{4096, 16}};
  auto client = tessera::Client::embedded(co);
  if (!client) return std::fprintf(stderr, "embedded: %s\n", client.error().message.c_str()), 1;
  auto ext = (*client)->add_external_worker("consumer-worker");
  if (!ext) return std::fprintf(stderr, "add_external_worker: %s\n", ext.error().message.c_str()), 1;
  auto arena = tessera::Arena::attach_fd(::dup(ext->arena_fd));
  if (!arena) return std::fprintf(stderr, "attach: %s\n", arena.error().message.c_str()), 1;
  auto worker = tessera::Worker::attach(std::move(*arena), ext->slot);
  if (!worker) return std::fprintf(stderr, "worker: %s\n", worker.error().message.c_str()), 1;
  (*client)->set_worker_pid(ext->index, static_cast<int>(::getpid()));

  auto stream = (*client)->open_stream({});
  tessera::InputBlock in;
  if (!stream || !(*client)->alloc(100, in, 1s)) return std::fprintf(stderr, "stream or alloc failed\n"), 1;
  for (int i = 0; i < 100; ++i) in.bytes()[static_cast<std::size_t>(i)] = static_cast<std::byte>(i);
  tessera::TileMeta meta;
  meta.shape = {100};
  if (!(*client)->submit(*stream, in, meta)) return std::fprintf(stderr, "submit failed\n"), 1;

  std::vector<tessera::Tile> tiles;
  if ((*worker)->take(tiles, 1, 5s) != tessera::TakeStatus::ok || tiles.size() != 1)
    return std::fprintf(stderr, "the worker got no tile\n"), 1;
  const auto bytes = tiles[0].input().as<const std::uint8_t>();
  tessera::OutputBlock out;
  if ((*worker)->alloc_output(tessera::DType::UInt32, {1}, out) != tessera::AllocStatus::ok)
    return std::fprintf(stderr, "alloc_output failed\n"), 1;
  out.as<std::uint32_t>()[0] = std::accumulate(bytes.begin(), bytes.end(), 0u);
  if ((*worker)->publish(tiles[0], out) != tessera::Errc::ok) return std::fprintf(stderr, "publish failed\n"), 1;

  std::vector<tessera::TileResult> results;
  if ((*client)->poll(results, 1, 5s) != 1) return std::fprintf(stderr, "no outcome\n"), 1;
  const auto& r = results[0];
  if (r.outcome != tessera::Outcome::completed || r.output.view().as<const std::uint32_t>()[0] != 4950)
    return std::fprintf(stderr, "wrong outcome: %s %s\n", tessera::outcome_name(r.outcome), r.error.c_str()), 1;
  std::printf("consumer_cpp: one tile through the installed package, sum 4950\n");
  return 0;
}
