// What an exported program says about its own sizes, read from its PIR file (NAME.json):
// its inputs' shapes (data ops), the shape of its output (the fetch op) and the shapes of
// the tables its gather ops read (the experts' timestep table). The manifest's sizes are
// checked against them before anything is allocated (as ernie_vilg2/deploy/program_info.py).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace ernie_vilg2 {

using Shape = std::vector<std::int64_t>;  // -1: a dynamic dimension

struct ProgramInfo {
  std::string path;
  std::map<std::string, Shape> inputs;
  Shape output;               // empty when the program has no fetch op
  std::vector<Shape> tables;  // parameters read by gather ops, in op order
};

// The largest program file read (a program grows with its ops, not its weights).
constexpr std::int64_t kMaxProgramBytes = 64ll << 20;

// Throws UserError naming `path` when it is not a PIR program file.
ProgramInfo read_program_info(const std::string& path);

}  // namespace ernie_vilg2
