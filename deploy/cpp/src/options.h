// The command line of ernie_vilg2_infer: its options, read and checked (UserError names the flag).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ernie_vilg2 {

struct Options {
  std::string model, out = "out.png", noise;
  std::vector<std::string> prompts;
  std::string negative_prompt;
  std::uint64_t seed = 0;
  int steps = 25, batch_size = 4, threads = 1, gpu_id = 0, repeat = 1, max_length = 0;
  std::string device = "cpu", sampler = "dpm", engine = "paddle";
  std::vector<double> guidance = {2.1};  // one scale, or one per expert
  bool timing = false, tokenize_only = false, verify_checksums = false, version = false;
};

// The options of argv; --help prints the usage and exits 0.
Options parse_args(int argc, char** argv);

}  // namespace ernie_vilg2
