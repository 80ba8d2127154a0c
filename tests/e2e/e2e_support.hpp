// Shared by the end-to-end tests: where the built example worker is.
#pragma once

#include <string>

namespace tessera::test {

// TESSERA_BIN_DIR is the build's bin/ directory (a compile definition of each e2e test).
inline const std::string kExampleWorker = std::string(TESSERA_BIN_DIR) + "/tessera-tissue-worker";

}  // namespace tessera::test
