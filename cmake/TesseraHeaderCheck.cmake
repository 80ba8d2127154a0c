# Header self-containment: every header under a library's public include root compiles
# on its own (one generated translation unit per header, which includes it twice to
# catch a missing include guard), with only that library linked. A header that leans on
# an include its users happen to make first fails here, not in a stranger's project.
# C headers (*.h) are compiled as C11 and as C++20. Built with the tests, not under the
# sanitizer presets (it checks text, not behaviour).
option(TESSERA_HEADER_CHECK "Compile every public header on its own" ON)

function(tessera_check_headers target root)
  if(NOT TESSERA_HEADER_CHECK OR NOT TESSERA_SANITIZE STREQUAL "")
    return()
  endif()
  file(GLOB_RECURSE headers CONFIGURE_DEPENDS RELATIVE ${root} ${root}/*.hpp ${root}/*.h)
  set(sources "")
  foreach(h ${headers})
    string(MAKE_C_IDENTIFIER ${h} id)
    set(body "#include <${h}>\n#include <${h}>\n")
    set(cpp ${CMAKE_BINARY_DIR}/header_check/${target}/${id}.cpp)
    file(CONFIGURE OUTPUT ${cpp} CONTENT "${body}")
    list(APPEND sources ${cpp})
    if(h MATCHES "\\.h$")
      set(c ${CMAKE_BINARY_DIR}/header_check/${target}/${id}.c)
      file(CONFIGURE OUTPUT ${c} CONTENT "${body}")
      list(APPEND sources ${c})
    endif()
  endforeach()
  if(sources)
    add_library(${target}_header_check OBJECT ${sources})
    set_target_properties(${target}_header_check PROPERTIES C_STANDARD 11 C_STANDARD_REQUIRED ON C_EXTENSIONS OFF)
    target_link_libraries(${target}_header_check PRIVATE ${target} tessera::build)
  endif()
endfunction()
