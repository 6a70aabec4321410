#include "malloc_tuning.h"

#include <cstdlib>
#include <string>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace ernie_vilg2 {

bool keep_freed_memory() {
  const char* opt_out = std::getenv("ERNIE_VILG2_MALLOC_TUNING");
  if (opt_out != nullptr && std::string(opt_out) == "0") return false;
  for (const char* name : {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"}) {
    if (std::getenv(name) != nullptr) return false;
  }
#if defined(__GLIBC__)
  return mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 512 << 20) == 1;
#else
  return false;
#endif
}

std::string malloc_tuning_description(bool set_here) {
  return set_here ? "glibc keeps freed memory (mmap threshold 32 MiB, trim threshold 512 MiB)"
                  : "malloc as configured";
}

}  // namespace ernie_vilg2
