#include <tessera/result.hpp>

namespace tessera {

const char* errc_name(Errc e) noexcept {
  switch (e) {
    case Errc::ok: return "ok";
    case Errc::invalid_argument: return "invalid_argument";
    case Errc::bad_magic: return "bad_magic";
    case Errc::bad_version: return "bad_version";
    case Errc::bad_size: return "bad_size";
    case Errc::not_ready: return "not_ready";
    case Errc::permission: return "permission";
    case Errc::system: return "system";
    case Errc::stale_handle: return "stale_handle";
    case Errc::bad_handle: return "bad_handle";
    case Errc::not_owner: return "not_owner";
    case Errc::no_space: return "no_space";
    case Errc::corrupt: return "corrupt";
    case Errc::closed: return "closed";
    case Errc::timeout: return "timeout";
    case Errc::protocol: return "protocol";
    case Errc::worker_failed: return "worker_failed";
    case Errc::canceled: return "canceled";
    case Errc::not_found: return "not_found";
    case Errc::unavailable: return "unavailable";
  }
  return "unknown";
}

}  // namespace tessera
