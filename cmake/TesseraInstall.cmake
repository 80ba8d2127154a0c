# install() + export(): `find_package(Tessera)` gives Tessera::client, Tessera::worker,
# Tessera::client_c and Tessera::worker_c (static libraries, C++20), and a pkg-config
# file, tessera.pc, describes the two C ABI shared libraries (libtessera_client.so,
# libtessera_worker.so). Only the public headers are installed: the data plane
# (arena, slab, rings, doorbells, tensors), the client API and the two C ABIs. Other
# libraries' headers live under their own include roots and are never installed.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(TESSERA_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/Tessera)

foreach(t client worker client_c worker_c)
  set_target_properties(tessera_${t} PROPERTIES EXPORT_NAME ${t})
endforeach()
# Everything the four link (static archives carry their dependencies along).
set(_tessera_exported tessera_client tessera_worker tessera_client_c tessera_worker_c
  tessera_core tessera_schema tessera_pool tessera_supervisor tessera_control tessera_wire
  tessera_capi_common tessera_build tessera_warnings tessera_sanitizers)
install(TARGETS ${_tessera_exported} EXPORT TesseraTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS tessera_client_shared tessera_worker_shared
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})

install(FILES
  ${PROJECT_SOURCE_DIR}/broker/include/tessera/arena.hpp
  ${PROJECT_SOURCE_DIR}/broker/capi/include/tessera/capi_common.h
  ${PROJECT_SOURCE_DIR}/broker/capi/include/tessera/client.h
  ${PROJECT_SOURCE_DIR}/broker/src/client/include/tessera/client.hpp
  ${PROJECT_SOURCE_DIR}/broker/include/tessera/doorbell.hpp
  ${PROJECT_SOURCE_DIR}/broker/include/tessera/handle.hpp
  ${PROJECT_SOURCE_DIR}/broker/include/tessera/layout.hpp
  ${PROJECT_SOURCE_DIR}/broker/include/tessera/result.hpp
  ${PROJECT_SOURCE_DIR}/broker/include/tessera/ring.hpp
  ${PROJECT_SOURCE_DIR}/broker/include/tessera/slab.hpp
  ${PROJECT_SOURCE_DIR}/broker/include/tessera/tensor.hpp
  ${PROJECT_SOURCE_DIR}/worker-sdk/include/tessera/worker.h
  ${PROJECT_SOURCE_DIR}/worker-sdk/include/tessera/worker.hpp
  ${PROJECT_BINARY_DIR}/broker/gen/tessera/tile_generated.h  # flatc output (broker/CMakeLists.txt)
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/tessera)

install(EXPORT TesseraTargets NAMESPACE Tessera:: DESTINATION ${TESSERA_CMAKE_DIR})
export(EXPORT TesseraTargets NAMESPACE Tessera:: FILE ${PROJECT_BINARY_DIR}/TesseraTargets.cmake)
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/TesseraConfig.cmake.in
  ${PROJECT_BINARY_DIR}/TesseraConfig.cmake INSTALL_DESTINATION ${TESSERA_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/TesseraConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/TesseraConfig.cmake ${PROJECT_BINARY_DIR}/TesseraConfigVersion.cmake
  DESTINATION ${TESSERA_CMAKE_DIR})

file(RELATIVE_PATH TESSERA_PC_PREFIX_REL /prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /prefix)  # relocatable: pcfiledir back to the prefix
configure_file(${CMAKE_CURRENT_LIST_DIR}/tessera.pc.in ${PROJECT_BINARY_DIR}/tessera.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/tessera.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
