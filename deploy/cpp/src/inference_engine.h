// One exported program (a Paddle Inference predictor) with named inputs and one output.
// The only file that talks to Paddle: the rest of the runner never sees its types.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ernie_vilg2 {

struct EngineOptions {
  int threads = 1;                 // CPU math library threads
  int gpu_id = -1;                 // -1: CPU; otherwise the GPU to run on (needs a GPU build of Paddle)
  std::string cpu_engine = "paddle";  // CPU kernels: paddle (native) or onednn
};

class Program {
 public:
  // `label` names the program in error messages (e.g. "text_encoder/inference.json").
  // Checks that the program's inputs are exactly `input_names` (in any order).
  Program(const std::string& label, const std::string& model_file, const std::string& params_file,
          const std::vector<std::string>& input_names, const EngineOptions& options);
  ~Program();
  Program(const Program&) = delete;
  Program& operator=(const Program&) = delete;

  void set_input(const std::string& name, const std::vector<int>& shape, const float* data);
  void set_input(const std::string& name, const std::vector<int>& shape, const std::int64_t* data);
  // Runs and returns output 0 (float32) and its shape.
  std::vector<float> run(std::vector<int>* shape);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// "Paddle Inference <version> (<wheel|official library>)".
std::string paddle_description();

}  // namespace ernie_vilg2
