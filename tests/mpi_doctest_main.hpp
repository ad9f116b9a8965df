// tests/mpi_doctest_main.hpp: the main of a doctest binary that runs under mpirun. MPI starts
// before the tests, and every rank exits alike: failed if any rank failed. The including file
// defines DOCTEST_CONFIG_IMPLEMENT before including doctest.
#pragma once

#include <doctest/doctest.h>
#include <mpi.h>

#include "muon/distributed/mpi.hpp"

namespace muon::test {

inline int run_doctest_under_mpi(int argc, char** argv) {
  muon::distributed::MpiEnvironment mpi(argc, argv);
  int failed = 0;
  {
    doctest::Context context(argc, argv);
    failed = context.run() != 0 ? 1 : 0;
    if (context.shouldExit()) return failed;
  }
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return failed;
}

}  // namespace muon::test
