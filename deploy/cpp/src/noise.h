// The initial latent noise: read from a .npy file (bit-identical to the Python runner's
// NumPy draw) or, without one, drawn by the runner's own generator.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ernie_vilg2 {

// Standard normal float32 values from `seed`: std::mt19937_64 (a generator the C++
// standard fixes bit for bit) and the Box-Muller transform in double precision, values in
// pairs (r cos, r sin). Reproducible across runs and machines, but not NumPy's sequence:
// for images identical to the Python runner's, pass its noise with --noise.
std::vector<float> generate_noise(std::uint64_t seed, std::size_t count);

// The noise of --noise FILE, which must have exactly `shape`; throws UserError.
std::vector<float> read_noise(const std::string& path, const std::vector<std::int64_t>& shape);

}  // namespace ernie_vilg2
