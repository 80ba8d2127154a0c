# Interface targets for warnings and sanitizers: linked per target, never global flag edits.
# Not -Wnull-dereference: at -O2/-O3, g++ 12 reports it on inlined std::span/std::string paths
# that cannot be null (false positives that would hide real warnings).
add_library(tessera_warnings INTERFACE)
add_library(tessera::warnings ALIAS tessera_warnings)
target_compile_options(tessera_warnings INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wold-style-cast -Wcast-align
  -Wdouble-promotion -Wformat=2 -Wimplicit-fallthrough)

add_library(tessera_sanitizers INTERFACE)
add_library(tessera::sanitizers ALIAS tessera_sanitizers)
if(TESSERA_SANITIZE STREQUAL "address")
  target_compile_options(tessera_sanitizers INTERFACE -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  target_link_options(tessera_sanitizers INTERFACE -fsanitize=address,undefined)
elseif(TESSERA_SANITIZE STREQUAL "thread")
  target_compile_options(tessera_sanitizers INTERFACE -fsanitize=thread -fno-omit-frame-pointer)
  target_link_options(tessera_sanitizers INTERFACE -fsanitize=thread)
elseif(NOT TESSERA_SANITIZE STREQUAL "")
  message(FATAL_ERROR "TESSERA_SANITIZE must be '', 'address' or 'thread'")
endif()

# libFuzzer builds (the `fuzz` preset, clang): every project target gets coverage
# instrumentation (fuzzer-no-link), so the fuzzer is guided through the libraries it
# drives, not only through its own target; tests/fuzz links the fuzzer runtime.
option(TESSERA_LIBFUZZER "Build the libFuzzer targets tessera_fuzz_* (needs clang)" OFF)
if(TESSERA_LIBFUZZER)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "TESSERA_LIBFUZZER needs clang (use the fuzz preset)")
  endif()
  target_compile_options(tessera_sanitizers INTERFACE -fsanitize=fuzzer-no-link)
endif()

# Every project target links both.
add_library(tessera_build INTERFACE)
add_library(tessera::build ALIAS tessera_build)
target_link_libraries(tessera_build INTERFACE tessera_warnings tessera_sanitizers)
