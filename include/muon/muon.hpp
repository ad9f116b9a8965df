// muon/muon.hpp: the whole core in one include.
//
// Muon (momentum → Newton–Schulz → update scaled to AdamW's RMS, decoupled weight decay) for
// hidden matrices and AdamW for the rest, written once against the muon::Backend concept.
// Include a backend too, e.g. <muon/backends/eigen.hpp>, and <muon/state_file.hpp> to save and
// load the optimizer state (the core itself reads and writes no files).
#pragma once

#include "muon/adamw_rule.hpp"       // IWYU pragma: export
#include "muon/backend.hpp"          // IWYU pragma: export
#include "muon/coefficients.hpp"     // IWYU pragma: export
#include "muon/error.hpp"            // IWYU pragma: export
#include "muon/muon_rule.hpp"        // IWYU pragma: export
#include "muon/optimizer.hpp"        // IWYU pragma: export
#include "muon/options.hpp"          // IWYU pragma: export
#include "muon/orthogonalize.hpp"    // IWYU pragma: export
#include "muon/parameter.hpp"        // IWYU pragma: export
#include "muon/row_scale.hpp"        // IWYU pragma: export
#include "muon/schedule.hpp"         // IWYU pragma: export
#include "muon/state.hpp"            // IWYU pragma: export
#include "muon/step_driver.hpp"      // IWYU pragma: export
#include "muon/stepper.hpp"          // IWYU pragma: export
#include "muon/tensor.hpp"           // IWYU pragma: export
#include "muon/version.hpp"          // IWYU pragma: export
