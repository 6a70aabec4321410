#include "inference_engine.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <numeric>
#include <sstream>
#include <stdexcept>

#include <fcntl.h>
#include <unistd.h>

#ifdef ERNIE_VILG2_OFFICIAL_PADDLE
#include "paddle_inference_api.h"  // the official Paddle Inference C++ library
#else
#include "paddle_api.h"  // our declarations of what the pip wheel exports
#endif

#include "errors.h"

namespace ernie_vilg2 {
namespace {

// The executor's garbage threshold: ernie_vilg2/utils/executor_gc.py says why, and sets the
// same for the Python tools.
constexpr const char* kGcVariable = "FLAGS_eager_delete_tensor_gb";
constexpr const char* kGcFlag = "eager_delete_tensor_gb";  // UpdateDllFlag takes the name without FLAGS_
constexpr const char* kGcBatchGb = "0.005";

// Paddle logs at each UpdateDllFlag call that it is meant for Windows DLLs (it sets the flag
// on every platform): stderr is pointed at /dev/null around the call.
class QuietStderr {
 public:
  QuietStderr() : saved_(dup(STDERR_FILENO)) {
    const int null = open("/dev/null", O_WRONLY);
    if (saved_ >= 0 && null >= 0) dup2(null, STDERR_FILENO);
    if (null >= 0) close(null);
  }
  ~QuietStderr() {
    if (saved_ < 0) return;
    dup2(saved_, STDERR_FILENO);
    close(saved_);
  }
  QuietStderr(const QuietStderr&) = delete;
  QuietStderr& operator=(const QuietStderr&) = delete;

 private:
  int saved_;
};

#ifdef ERNIE_VILG2_OFFICIAL_PADDLE
constexpr const char* kPaddleSource = "official Paddle Inference library";

// With the official header the class is complete: construct it as usual.
class ConfigHolder {
 public:
  ConfigHolder(const std::string& model, const std::string& params) : config_(model, params) {}
  paddle_infer::Config& get() { return config_; }

 private:
  paddle_infer::Config config_;
};

using TensorHandle = std::unique_ptr<paddle_infer::Tensor>;
TensorHandle keep_handle(std::unique_ptr<paddle_infer::Tensor> handle) { return handle; }
paddle_infer::Tensor* raw(const TensorHandle& handle) { return handle.get(); }
#else
constexpr const char* kPaddleSource = "paddlepaddle wheel";

// Our declaration of AnalysisConfig has no members, so the object is built by the
// library's constructor inside storage far larger than the real object (1,632 bytes in
// Paddle 3.3.1). The second half of the storage is a guard: if the constructor wrote
// into it, the library's class has outgrown what this build assumes.
class ConfigHolder {
 public:
  ConfigHolder(const std::string& model, const std::string& params) {
    std::memset(storage_, kGuardByte, sizeof storage_);
    config_ = new (storage_) paddle_infer::Config(model, params);
    const bool guard_intact = std::all_of(storage_ + kUsable, storage_ + sizeof storage_,
                                          [](unsigned char b) { return b == kGuardByte; });
    if (!guard_intact) {
      throw std::runtime_error("this Paddle library's Config is larger than the " + std::to_string(kUsable) +
                               " bytes the runner reserves for it: build against the official Paddle Inference "
                               "library (-DPADDLE_INFERENCE_DIR=...) or raise kUsable in inference_engine.cc");
    }
  }
  ~ConfigHolder() { std::destroy_at(config_); }
  ConfigHolder(const ConfigHolder&) = delete;
  ConfigHolder& operator=(const ConfigHolder&) = delete;
  paddle_infer::Config& get() { return *config_; }

 private:
  static constexpr std::size_t kUsable = 8192;
  static constexpr unsigned char kGuardByte = 0xA5;
  alignas(64) unsigned char storage_[2 * kUsable];
  paddle_infer::Config* config_ = nullptr;
};

// paddle_infer::Tensor's destructor is inline in the official header and the wheel does
// not export it, so handles are released and never deleted (a few small objects per
// program, alive as long as the process anyway).
using TensorHandle = paddle_infer::Tensor*;
TensorHandle keep_handle(std::unique_ptr<paddle_infer::Tensor> handle) { return handle.release(); }
paddle_infer::Tensor* raw(TensorHandle handle) { return handle; }
#endif

// Paddle's exceptions carry a multi-line report; keep the line that says what failed,
// e.g. "(NotFound) Cannot open file ...".
std::string paddle_message(const std::exception& error) {
  std::istringstream lines(error.what());
  std::string line, first;
  while (std::getline(lines, line)) {
    const auto start = line.find_first_not_of(" \t");
    if (start == std::string::npos) continue;
    line = line.substr(start);
    if (first.empty()) first = line;
    if (line[0] == '(') return line.substr(0, 400);
  }
  return first.substr(0, 400);
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

}  // namespace

struct Program::Impl {
  std::string label;
  std::unique_ptr<ConfigHolder> config;
  std::shared_ptr<paddle_infer::Predictor> predictor;
  std::map<std::string, TensorHandle> inputs;
  TensorHandle output{};
};

Program::Program(const std::string& label, const std::string& model_file, const std::string& params_file,
                 const std::vector<std::string>& input_names, const EngineOptions& options)
    : impl_(new Impl) {
  impl_->label = label;
  try {
    impl_->config.reset(new ConfigHolder(model_file, params_file));
    paddle_infer::Config& config = impl_->config->get();
    // Native kernels (oneDNN off) match the dynamic graph bit for bit; the exporter rewrites
    // the U-Net's nearest upsampling and timestep embedding so that the programs also run
    // under oneDNN (faster, about 1e-6 from the dynamic graph), as the Python runner's
    // --engine onednn does.
    if (options.cpu_engine == "onednn") {
      config.EnableONEDNN();
    } else {
      config.DisableONEDNN();
    }
    config.SwitchIrOptim(true);  // on, as in the Python runner: same outputs, faster
    config.SetCpuMathLibraryNumThreads(options.threads);
    config.DisableGlogInfo();
    if (options.gpu_id >= 0) {
      config.EnableUseGpu(256, options.gpu_id, paddle_infer::Config::Precision::kFloat32);
      if (!config.use_gpu()) {
        throw UserError("--device gpu: this Paddle library was built without GPU support (CPU only)");
      }
    }
    impl_->predictor = paddle_infer::CreatePredictor(config);
    if (!impl_->predictor) throw std::runtime_error("Paddle could not create a predictor");

    std::vector<std::string> actual = impl_->predictor->GetInputNames();
    std::vector<std::string> expected = input_names;
    std::sort(actual.begin(), actual.end());
    std::sort(expected.begin(), expected.end());
    if (actual != expected) {
      throw std::runtime_error("the program has inputs [" + join(actual) + "], expected [" + join(expected) +
                               "] (an export of another format version?)");
    }
    for (const std::string& name : input_names) {
      impl_->inputs[name] = keep_handle(impl_->predictor->GetInputHandle(name));
    }
    const std::vector<std::string> outputs = impl_->predictor->GetOutputNames();
    if (outputs.empty()) throw std::runtime_error("the program has no outputs");
    impl_->output = keep_handle(impl_->predictor->GetOutputHandle(outputs[0]));
  } catch (const UserError&) {
    throw;
  } catch (const std::exception& error) {
    throw std::runtime_error(label + ": " + paddle_message(error));
  }
}

Program::~Program() {
  if (!impl_) return;
  impl_->predictor.reset();  // before the Config it was created from
  impl_->config.reset();
}

void Program::set_input(const std::string& name, const std::vector<int>& shape, const float* data) {
  paddle_infer::Tensor* tensor = raw(impl_->inputs.at(name));
  tensor->Reshape(shape);
  tensor->CopyFromCpu(data);
}

void Program::set_input(const std::string& name, const std::vector<int>& shape, const std::int64_t* data) {
  paddle_infer::Tensor* tensor = raw(impl_->inputs.at(name));
  tensor->Reshape(shape);
  // int64_t is `long` on LP64 Linux: the library exports CopyFromCpu<long>.
  tensor->CopyFromCpu(reinterpret_cast<const long*>(data));  // NOLINT(runtime/int)
}

std::vector<float> Program::run(std::vector<int>* shape) {
  try {
    if (!impl_->predictor->Run()) throw std::runtime_error("Run() failed");
    const paddle_infer::Tensor* output = raw(impl_->output);
    *shape = output->shape();
    const std::size_t count = std::accumulate(shape->begin(), shape->end(), std::size_t{1},
                                              [](std::size_t a, int b) { return a * static_cast<std::size_t>(b); });
    std::vector<float> values(count);
    output->CopyToCpu(values.data());
    return values;
  } catch (const std::exception& error) {
    throw std::runtime_error(impl_->label + ": " + paddle_message(error));
  }
}

std::string batch_freed_tensors() {
  // Paddle Inference does not read FLAGS_* from the environment: a value set there is passed on.
  const char* user = std::getenv(kGcVariable);
  const std::string value = user != nullptr ? user : kGcBatchGb;
  {
    QuietStderr quiet;
    paddle_infer::UpdateDllFlag(kGcFlag, value.c_str());
  }
  return std::string("executor garbage ") + kGcVariable + "=" + value + (user != nullptr ? " (environment)" : "");
}

std::string paddle_description() {
  // GetVersion() is several lines ("version: 3.3.1\ncommit: ..."); keep the first.
  const std::string version = paddle_infer::GetVersion();
  return "Paddle Inference " + version.substr(0, version.find('\n')) + " (" + kPaddleSource + ")";
}

PaddleBuild paddle_build() {
  PaddleBuild build;
  std::istringstream lines(paddle_infer::GetVersion());
  for (std::string line; std::getline(lines, line);) {
    const std::size_t colon = line.find(": ");
    if (colon == std::string::npos) continue;
    const std::string key = line.substr(0, colon), value = line.substr(colon + 2);
    if (key == "version") build.version = value;
    if (key == "commit") build.commit = value;
  }
  return build;
}

}  // namespace ernie_vilg2
