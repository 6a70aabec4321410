// MKL's AVX2 code path on AMD CPUs, as `import ernie_vilg2` chooses it for Python
// (ernie_vilg2/utils/mkl_dispatch.py): the MKL inside Paddle's CPU build picks its code
// path by CPU vendor and runs its SSE path on AMD processors; MKL_DEBUG_CPU_TYPE=5 selects
// the AVX2 path, which AMD CPUs with AVX2 and FMA execute (matmuls about 5x faster).
#pragma once

#include <string>

namespace ernie_vilg2 {

// Sets MKL_DEBUG_CPU_TYPE=5 on an AMD (or Hygon) CPU with AVX2 and FMA; call it before
// MKL's first call. Never over a value the user set, nor with ERNIE_VILG2_MKL_AVX2=0.
// Returns whether it set the variable.
bool prefer_mkl_avx2();

// What MKL_DEBUG_CPU_TYPE says now and who set it (`set_here`: prefer_mkl_avx2 did), for --version.
std::string mkl_dispatch_description(bool set_here);

}  // namespace ernie_vilg2
