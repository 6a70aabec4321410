// RGB images: from the VAE decoder's output to uint8, a grid of several, and PNG files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ernie_vilg2 {

struct RgbImage {
  int width = 0, height = 0;
  std::vector<std::uint8_t> pixels;  // HWC, RGB
};

// One image of a decoder output [B, 3, H, W] in about [-1, 1]: clip(x / 2 + 0.5, 0, 1),
// then round(x * 255) (round half to even, as numpy_to_pil does), in float32.
RgbImage decoder_output_to_image(const std::vector<float>& output, int index, int height, int width);

// Images tiled row by row with `padding` white pixels around each, as
// ernie_vilg2.utils.images.make_grid does (cols 0: ceil(sqrt(n))).
RgbImage make_grid(const std::vector<RgbImage>& images, int cols = 0, int padding = 2);

// Writes an 8-bit RGB PNG atomically (a temporary file renamed over `path`), making its
// folder if needed; throws UserError naming the path.
void write_png(const RgbImage& image, const std::string& path);

}  // namespace ernie_vilg2
