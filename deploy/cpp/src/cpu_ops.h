// The project's C++ CPU operators (ernie_vilg2/ops) in an export: the exporter saves, beside the
// experts' and the VAE decoder's programs, the same programs traced with the operators, copies
// their library into the folder and records in the manifest's `cpu_ops` the Paddle it was built
// for. The runner follows the Python runner's rules (ernie_vilg2/deploy/cpu_ops.py): on the CPU
// (engines paddle and onednn) it registers that library with Paddle before its first predictor
// and runs those programs; it runs the plain programs where the export has none, on a GPU, or
// with ERNIE_VILG2_CPU_OPS=0, and, with one warning line saying why, where the library is missing,
// was built for another Paddle or cannot be loaded.
#pragma once

#include <string>

#include "manifest.h"

namespace ernie_vilg2 {

// Decides whether the programs of `manifest` run with the operators on `device` with the CPU
// engine `engine`, and if so registers their library (once per process: call it before creating
// a predictor) and switches the manifest's program files to the programs with the operators.
// The library's size (and with `sha256`, its checksum) is checked first, as verify_files does.
// `manifest` may be null (--version without --model). Returns what --version prints:
// "C++ CPU operators: on (LIBRARY)" or "C++ CPU operators: off (WHY)".
std::string use_cpu_operators(Manifest* manifest, const std::string& device, const std::string& engine, bool sha256);

}  // namespace ernie_vilg2
