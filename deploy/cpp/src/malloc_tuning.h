// glibc keeps freed memory, as tune_cpu_process() sets it for the Python tools
// (ernie_vilg2/utils/malloc_tuning.py): Paddle's kernels allocate outputs afresh, and with glibc's
// default thresholds a tensor of a few MiB is mapped from the OS and page-faults on its first
// write. mallopt raises the mmap threshold to 32 MiB and the trim threshold to 512 MiB.
#pragma once

#include <string>

namespace ernie_vilg2 {

// Sets both thresholds; call it before the first predictor. Not where MALLOC_MMAP_THRESHOLD_,
// MALLOC_TRIM_THRESHOLD_ or GLIBC_TUNABLES is set, nor with ERNIE_VILG2_MALLOC_TUNING=0, nor
// outside glibc. Returns whether it set them.
bool keep_freed_memory();

// What the allocator was told (`set_here`: keep_freed_memory did), for --version.
std::string malloc_tuning_description(bool set_here);

}  // namespace ernie_vilg2
