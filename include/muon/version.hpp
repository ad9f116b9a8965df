// muon/version.hpp: the library version; CMake reads it from here.
#pragma once

#define MUON_VERSION_MAJOR 0
#define MUON_VERSION_MINOR 1
#define MUON_VERSION_PATCH 0
