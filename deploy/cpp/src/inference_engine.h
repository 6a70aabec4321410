// One exported program (a Paddle Inference predictor) with named inputs and one output.
// The only file that uses Paddle Inference's API: the rest of the runner never sees its types
// (cpu_ops.cc registers the project's operators through one more Paddle function).
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

// Paddle's executor frees dead tensors in batches (FLAGS_eager_delete_tensor_gb); call before
// the first predictor runs. Returns what was set, for --version.
std::string batch_freed_tensors();

// "Paddle Inference <version> (<wheel|official library>)".
std::string paddle_description();

// The linked Paddle's version and commit as paddle_infer::GetVersion() gives them; the commit
// is abbreviated there ("commit: 7688495" in 3.3.1). Empty when it says none.
struct PaddleBuild {
  std::string version, commit;
};
PaddleBuild paddle_build();

}  // namespace ernie_vilg2
