// tests/cpu_blas_eigen_only.cpp: test_cpu_blas's second translation unit, built without OpenBLAS and
// oneDNN whatever CMake found, as a user's unit compiled with other flags would be.
#undef MUON_HAS_OPENBLAS
#undef MUON_HAS_ONEDNN

#include "cpu_blas_probe.hpp"

namespace muon::test {

BlasProbe probe_eigen_only() { return probe_products(); }

}  // namespace muon::test
