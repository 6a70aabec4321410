#include "noise.h"

#include <cmath>
#include <random>

#include "errors.h"
#include "npy.h"

namespace ernie_vilg2 {
namespace {

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

}  // namespace

std::vector<float> generate_noise(std::uint64_t seed, std::size_t count) {
  std::mt19937_64 engine(seed);
  // 53 random bits -> a double in (0, 1): never 0, so the logarithm stays finite.
  auto uniform = [&engine] { return (static_cast<double>(engine() >> 11) + 0.5) * 0x1.0p-53; };
  const double two_pi = 6.283185307179586;
  std::vector<float> values(count);
  for (std::size_t i = 0; i < count; i += 2) {
    const double radius = std::sqrt(-2.0 * std::log(uniform()));
    const double angle = two_pi * uniform();
    values[i] = static_cast<float>(radius * std::cos(angle));
    if (i + 1 < count) values[i + 1] = static_cast<float>(radius * std::sin(angle));
  }
  return values;
}

std::vector<float> read_noise(const std::string& path, const std::vector<std::int64_t>& shape) {
  NpyArray array = read_npy(path);
  if (array.shape != shape) {
    throw UserError("--noise: " + path + " has shape " + shape_text(array.shape) + ", expected " + shape_text(shape) +
                    " (images x latent channels x latent height x latent width)");
  }
  return std::move(array.values);
}

}  // namespace ernie_vilg2
