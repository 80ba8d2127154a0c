// Test worker for the batch tests (not an example): tessera::serve_batched with
//   argv[1] = max_batch, argv[2] = max_wait in ms.
// Tile i of a batch is answered with uint64[4] = {x, sum of its bytes as read from the
// assembled batch buffer, batch size, bytes per tile of the batch}.
//   op 1: the handler fails the tiles whose x is a multiple of 3 itself, publishes the rest
//   op 2: a tile with op 2 makes the handler throw (fails every tile of its batch)
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include <tessera/batch.hpp>

int main(int argc, char** argv) {
  tessera::BatchServeOptions o;
  if (argc > 1) o.batch.max_batch = std::strtoul(argv[1], nullptr, 10);
  if (argc > 2) o.batch.max_wait = std::chrono::milliseconds(std::strtol(argv[2], nullptr, 10));
  std::vector<std::uint64_t> out;
  return tessera::serve_batched(
      [&out](tessera::Worker& w, tessera::Batch& b) {
        for (const auto& t : b.tiles())
          if (t.op() == 2) throw std::runtime_error("op 2 throws (batch of " + std::to_string(b.size()) + ")");
        out.assign(b.size() * 4, 0);
        for (std::size_t i = 0; i < b.size(); ++i) {
          std::uint64_t sum = 0;
          for (std::size_t k = 0; k < b.tile_bytes(); ++k) sum += static_cast<std::uint8_t>(b.data()[i * b.tile_bytes() + k]);
          const tessera::Tile& t = b[i];
          out[i * 4 + 0] = static_cast<std::uint64_t>(t.desc().x());
          out[i * 4 + 1] = sum;
          out[i * 4 + 2] = b.size();
          out[i * 4 + 3] = b.tile_bytes();
          if (t.op() == 1 && t.desc().x() % 3 == 0)
            (void)w.fail(b[i], tessera::TileStatus::HandlerError, "x=" + std::to_string(t.desc().x()) + " is a multiple of 3");
        }
        b.publish_each(out.data(), tessera::DType::UInt64, {4});
      },
      o);
}
