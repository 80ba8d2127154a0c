# All dependencies come from Debian 12 packages (tools/deps installs them).
find_package(Threads REQUIRED)
find_package(Boost 1.81 CONFIG REQUIRED COMPONENTS json)
find_package(FlatBuffers CONFIG REQUIRED)   # CamelCase: 'flatbuffers' is not found
find_package(PkgConfig REQUIRED)
pkg_check_modules(URING REQUIRED IMPORTED_TARGET liburing)
find_package(fmt CONFIG REQUIRED)
find_package(spdlog CONFIG REQUIRED)
find_package(CLI11 CONFIG REQUIRED)
find_package(PNG REQUIRED)   # tests read the PNG preview back with libpng
if(TESSERA_BUILD_TESTS)
  find_package(GTest CONFIG REQUIRED)
  include(GoogleTest)
endif()
if(TESSERA_BUILD_PYTHON)
  set(PYBIND11_FINDPYTHON ON)
  if(NOT DEFINED Python_EXECUTABLE)
    set(Python_EXECUTABLE /usr/bin/python3)   # Debian's interpreter: numpy/torch/pybind11 are for it only
  endif()
  find_package(Python 3.11 REQUIRED COMPONENTS Interpreter Development.Module)
  find_package(pybind11 2.10 CONFIG REQUIRED)
endif()
# Optional: real slides through OpenSlide.
pkg_check_modules(OPENSLIDE IMPORTED_TARGET openslide)
# Slides and overlay outputs: libtiff reads tile directories and writes the pyramidal mask
# TIFF, libjpeg-turbo's TurboJPEG API decodes tiles, zlib compresses the shared zero tile.
find_package(TIFF REQUIRED)                                            # libtiff-dev
find_package(ZLIB REQUIRED)
pkg_check_modules(TURBOJPEG REQUIRED IMPORTED_TARGET libturbojpeg)     # libturbojpeg0-dev
pkg_check_modules(LIBDEFLATE REQUIRED IMPORTED_TARGET libdeflate)      # libdeflate-dev: the PNG preview
