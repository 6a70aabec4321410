// The code path and cache sizes the CPU operators run with, chosen once per process.
//
// Path: the widest of avx512 / avx2 / generic that both this CPU and this build have, or the
// one ERNIE_VILG2_CPU_ISA names (auto, generic, avx2, avx512); a named path this CPU or build
// lacks is refused (no silent fallback: a forced path is for tests and measurements).
// Caches: L1d and L2 per core from sysconf, else sysfs, else the sizes the blocks were first
// tuned on (32 KiB, 512 KiB).
#pragma once

#include <cstdint>

// The x86 paths need GCC's or Clang's target attributes; build.py defines ERNIE_VILG2_NO_AVX512
// where the compiler (or its assembler) cannot emit AVX-512.
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define ERNIE_VILG2_X86_PATHS 1
#if !defined(ERNIE_VILG2_NO_AVX512)
#define ERNIE_VILG2_AVX512_PATH 1
#endif
#endif

namespace ernie_vilg2 {

enum Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

// The chosen path, or a one-line message when ERNIE_VILG2_CPU_ISA asks for one it cannot have.
struct IsaChoice {
  int isa;  // an Isa, or -1 when refused
  const char* error;
};
const IsaChoice& cpu_isa();

struct CacheSizes {
  int64_t l1d, l2;               // bytes per core
  int l1d_source, l2_source;     // a CacheSource
};
enum CacheSource : int { kDefault = 0, kSysconf = 1, kSysfs = 2 };
const CacheSizes& cpu_caches();

}  // namespace ernie_vilg2
