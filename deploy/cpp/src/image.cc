#include "image.h"

#include <png.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "errors.h"

namespace ernie_vilg2 {

RgbImage decoder_output_to_image(const std::vector<float>& output, int index, int height, int width) {
  RgbImage image;
  image.width = width;
  image.height = height;
  image.pixels.resize(static_cast<std::size_t>(height) * width * 3);
  const std::size_t plane = static_cast<std::size_t>(height) * width;
  const float* data = output.data() + static_cast<std::size_t>(index) * 3 * plane;
  for (int c = 0; c < 3; ++c) {
    for (std::size_t p = 0; p < plane; ++p) {
      const float value = std::min(std::max(data[c * plane + p] / 2.0f + 0.5f, 0.0f), 1.0f);
      image.pixels[p * 3 + c] = static_cast<std::uint8_t>(std::nearbyint(value * 255.0f));
    }
  }
  return image;
}

RgbImage make_grid(const std::vector<RgbImage>& images, int cols, int padding) {
  const int n = static_cast<int>(images.size());
  if (cols <= 0) {
    cols = 1;
    while (cols * cols < n) ++cols;
  }
  cols = std::min(cols, n);
  const int rows = (n + cols - 1) / cols;
  const int w = images[0].width, h = images[0].height;
  RgbImage grid;
  grid.width = cols * w + (cols + 1) * padding;
  grid.height = rows * h + (rows + 1) * padding;
  grid.pixels.assign(static_cast<std::size_t>(grid.width) * grid.height * 3, 255);
  for (int i = 0; i < n; ++i) {
    const int x0 = padding + (i % cols) * (w + padding), y0 = padding + (i / cols) * (h + padding);
    for (int y = 0; y < h; ++y) {
      std::copy_n(images[i].pixels.begin() + static_cast<std::ptrdiff_t>(y) * w * 3, w * 3,
                  grid.pixels.begin() + (static_cast<std::ptrdiff_t>(y0 + y) * grid.width + x0) * 3);
    }
  }
  return grid;
}

void write_png(const RgbImage& image, const std::string& path) {
  std::error_code ignored;  // a folder that cannot be made shows up as fopen's error below
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ignored);
  const std::string temporary = path + ".tmp";
  FILE* file = std::fopen(temporary.c_str(), "wb");
  if (!file) throw UserError("--out: cannot write " + path);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    std::fclose(file);
    std::remove(temporary.c_str());
    throw UserError("--out: failed to write the PNG " + path);
  }
  png_init_io(png, file);
  png_set_IHDR(png, info, image.width, image.height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < image.height; ++y) {
    png_write_row(png, image.pixels.data() + static_cast<std::size_t>(y) * image.width * 3);
  }
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  const bool closed = std::fclose(file) == 0;
  if (!closed || std::rename(temporary.c_str(), path.c_str()) != 0) {
    std::remove(temporary.c_str());
    throw UserError("--out: cannot write " + path);
  }
}

}  // namespace ernie_vilg2
