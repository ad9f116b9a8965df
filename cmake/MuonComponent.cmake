# muon_component(NAME DOC DEFAULT): an AUTO|ON|OFF cache option MUON_ENABLE_<NAME>.
#   AUTO: enable if found; ON: fail configuration if missing; OFF: never.
# muon_find_component(NAME <find_package args>): applies the option, sets MUON_HAS_<NAME>.
set(_muon_components "" CACHE INTERNAL "")

function(muon_component name doc default)
  set(MUON_ENABLE_${name} ${default} CACHE STRING "Enable ${doc} (AUTO, ON, OFF)")
  set_property(CACHE MUON_ENABLE_${name} PROPERTY STRINGS AUTO ON OFF)
  set(_muon_components ${_muon_components} ${name} CACHE INTERNAL "")
endfunction()

macro(muon_find_component name)
  set(MUON_HAS_${name} OFF)
  if(NOT MUON_ENABLE_${name} STREQUAL "OFF")
    if(MUON_ENABLE_${name} STREQUAL "ON")
      find_package(${ARGN} REQUIRED)
    else()
      find_package(${ARGN} QUIET)
    endif()
    if(${ARGV1}_FOUND)
      set(MUON_HAS_${name} ON)
    endif()
  endif()
endmacro()

function(muon_print_summary)
  message(STATUS "muon ${PROJECT_VERSION} components:")
  foreach(name ${_muon_components})
    message(STATUS "  ${name}: ${MUON_HAS_${name}} (MUON_ENABLE_${name}=${MUON_ENABLE_${name}})")
  endforeach()
endfunction()
