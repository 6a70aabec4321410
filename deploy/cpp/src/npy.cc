#include "npy.h"

#include <cstring>
#include <fstream>
#include <regex>

#include "errors.h"

namespace ernie_vilg2 {
namespace {

std::string header_value(const std::string& header, const std::string& key, const std::string& path) {
  // The header is a Python dict literal: {'descr': '<f4', 'fortran_order': False, 'shape': (1, 4, 8, 8), }
  const std::regex pattern("'" + key + "'\\s*:\\s*('[^']*'|True|False|\\([^)]*\\))");
  std::smatch match;
  if (!std::regex_search(header, match, pattern)) throw UserError(path + ": not a .npy file (no '" + key + "')");
  return match[1];
}

}  // namespace

NpyArray read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError("--noise: file not found: " + path);
  char magic[8];
  if (!in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) {
    throw UserError(path + ": not a .npy file");
  }
  std::uint32_t header_length = 0;
  unsigned char length_bytes[4] = {0, 0, 0, 0};
  const int width = magic[6] == 1 ? 2 : 4;  // format 1.0: u16 length, 2.0 / 3.0: u32
  if (!in.read(reinterpret_cast<char*>(length_bytes), width)) throw UserError(path + ": truncated .npy header");
  for (int i = width - 1; i >= 0; --i) header_length = header_length * 256 + length_bytes[i];
  if (header_length > 1 << 20) throw UserError(path + ": not a .npy file (implausible header)");
  std::string header(header_length, '\0');
  if (!in.read(&header[0], header_length)) throw UserError(path + ": truncated .npy header");

  const std::string descr = header_value(header, "descr", path);
  if (descr != "'<f4'" && descr != "'<f8'") {
    throw UserError(path + ": expected float32 or float64 values, found dtype " + descr);
  }
  if (header_value(header, "fortran_order", path) != "False") throw UserError(path + ": expected C order");
  NpyArray array;
  const std::string shape = header_value(header, "shape", path);
  std::size_t count = 1;
  const std::regex number("\\d+");
  for (auto it = std::sregex_iterator(shape.begin(), shape.end(), number); it != std::sregex_iterator(); ++it) {
    array.shape.push_back(std::stoll(it->str()));
    count *= static_cast<std::size_t>(array.shape.back());
  }
  array.values.resize(count);
  if (descr == "'<f4'") {
    in.read(reinterpret_cast<char*>(array.values.data()), static_cast<std::streamsize>(count * sizeof(float)));
  } else {
    std::vector<double> wide(count);
    in.read(reinterpret_cast<char*>(wide.data()), static_cast<std::streamsize>(count * sizeof(double)));
    for (std::size_t i = 0; i < count; ++i) array.values[i] = static_cast<float>(wide[i]);
  }
  if (!in) throw UserError(path + ": truncated (fewer values than its shape says)");
  return array;
}

}  // namespace ernie_vilg2
