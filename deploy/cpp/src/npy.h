// Reading the initial noise from a NumPy .npy file (written by the Python runner's
// --save-noise), so that both runners start from the same bits.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ernie_vilg2 {

struct NpyArray {
  std::vector<std::int64_t> shape;
  std::vector<float> values;  // C order
};

// Accepts little-endian float32 ('<f4') or float64 ('<f8', converted like
// numpy's astype("float32")), C order; throws UserError naming the file otherwise.
NpyArray read_npy(const std::string& path);

}  // namespace ernie_vilg2
