// The part of Paddle Inference's C++ API (`paddle_infer::`) that this runner calls,
// declared in our own words for building against the PyPI wheel, which exports these
// functions from paddle/base/libpaddle.so but ships no inference headers.
//
// What these declarations assume about the library (checked with `nm -DC` on
// paddlepaddle 3.3.1; see deploy/README.md, "ABI assumptions"):
// - Itanium C++ ABI with libstdc++'s cxx11 std::string / std::vector / smart pointers.
// - The mangled names below exist and are exported: they depend only on the namespaces,
//   class names, argument types and constness (e.g. CopyToCpu<float> is const).
// - No class layout is assumed. The classes here have no data members: a Config is
//   built by the library's own constructor in storage that is larger than the real
//   object (inference_engine.cc checks that with a guard region), and Predictor and Tensor
//   objects are only ever created by the library and used through pointers.
// - paddle_infer::Tensor's destructor is inline in the official header and not exported,
//   so tensor handles are never deleted here (see inference_engine.cc).
// When the official Paddle Inference library is used (-DPADDLE_INFERENCE_DIR), this file
// is not included: its own header paddle_inference_api.h is.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace paddle {

class AnalysisConfig {
 public:
  enum class Precision { kFloat32 = 0, kInt8, kHalf, kBf16 };

  AnalysisConfig(const std::string& prog_file, const std::string& params_file);
  ~AnalysisConfig();
  AnalysisConfig(const AnalysisConfig&) = delete;
  AnalysisConfig& operator=(const AnalysisConfig&) = delete;

  void DisableONEDNN();
  void EnableONEDNN();
  void SetCpuMathLibraryNumThreads(int num_threads);
  void SwitchIrOptim(int enable);
  void DisableGlogInfo();
  void EnableUseGpu(std::uint64_t memory_pool_init_size_mb, int device_id, Precision precision);
  bool use_gpu() const;
};

}  // namespace paddle

namespace paddle_infer {

using Config = paddle::AnalysisConfig;

class Tensor {
 public:
  void Reshape(const std::vector<int>& shape);
  template <typename T>
  void CopyFromCpu(const T* data);
  template <typename T>
  void CopyToCpu(T* data) const;
  std::vector<int> shape() const;

 private:
  Tensor() = delete;  // only the library creates tensors
};

class Predictor {
 public:
  std::vector<std::string> GetInputNames();
  std::unique_ptr<Tensor> GetInputHandle(const std::string& name);
  std::vector<std::string> GetOutputNames();
  std::unique_ptr<Tensor> GetOutputHandle(const std::string& name);
  bool Run();

 private:
  Predictor() = delete;  // only CreatePredictor creates predictors
};

std::shared_ptr<Predictor> CreatePredictor(const Config& config);
std::string GetVersion();
// Sets one of Paddle's flags by name (PADDLE_ENFORCE fails on an unknown flag or value).
void UpdateDllFlag(const char* name, const char* value);

}  // namespace paddle_infer
