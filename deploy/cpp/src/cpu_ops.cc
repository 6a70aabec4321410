#include "cpu_ops.h"

#include <sys/stat.h>

#include <cstdlib>
#include <exception>
#include <iostream>
#include <sstream>
#include <vector>

#include "inference_engine.h"

// Paddle's loader of custom operator libraries (paddle/fluid/framework/custom_operator.h, a
// header neither the wheel nor the official library ships): it loads the library, registers its
// operators for the predictors created afterwards and returns the table of their descriptions,
// which the runner does not read. It throws an exception derived from std::exception when the
// library cannot be loaded.
//
// Declared here in our own words. What that assumes about libpaddle.so (checked with `nm -DC`
// and its machine code on paddlepaddle 3.3.1):
// - The function is exported by this mangled name, which under the Itanium C++ ABI depends on
//   its namespace, name and parameter (libstdc++'s cxx11 std::string const&), not on its
//   return type (it is not a template).
// - 3.3.1 returns the table by value (a std::unordered_map, 56 bytes): the caller passes the
//   address of storage for it as a hidden first argument (the string comes second). A struct
//   of plain bytes larger than 16 bytes is returned the same way, so this declaration makes
//   the same call, with storage far larger than the table. The table is never destroyed (that
//   needs Paddle's own types): a few small allocations, once per process.
// The official library's headers are never included here, so this compiles in both builds.
namespace paddle {
namespace framework {
struct RegisteredOperatorTable {
  alignas(16) unsigned char storage[512];
};
RegisteredOperatorTable LoadOpMetaInfoAndRegisterOp(const std::string& dso_name);
}  // namespace framework
}  // namespace paddle

namespace ernie_vilg2 {
namespace {

constexpr const char* kSwitch = "ERNIE_VILG2_CPU_OPS";  // "0": off, as in the Python package
// GetVersion() gives the commit abbreviated; fewer digits than this identify no build.
constexpr std::size_t kMinCommitDigits = 7;

bool is_file(const std::string& path) {
  struct stat info {};
  return stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

// Why operators built as `entry` says cannot run on the linked Paddle, or "" when they can.
std::string paddle_mismatch(const CpuOpsLibrary& entry) {
  const PaddleBuild linked = paddle_build();
  const bool same_commit = linked.commit.size() >= kMinCommitDigits &&
                           entry.paddle_commit.compare(0, linked.commit.size(), linked.commit) == 0;
  if (entry.paddle_version == linked.version && same_commit) return "";
  return "built for Paddle " + entry.paddle_version + " (" + entry.paddle_commit.substr(0, 10) + "), this is " +
         linked.version + " (" + linked.commit.substr(0, 10) + ")";
}

#ifdef ERNIE_VILG2_OFFICIAL_PADDLE
// The library links the wheel's libpaddle.so (paddle.utils.cpp_extension builds it so): loading
// it beside libpaddle_inference.so would put a second Paddle into the process.
std::string register_library(const std::string& path) {
  return path + " links the paddlepaddle wheel's libpaddle.so, this runner the official Paddle Inference library";
}
#else
// The last non-blank line of Paddle's multi-line error report (what failed, where).
std::string last_line(const std::string& text) {
  std::istringstream lines(text);
  std::string line, last;
  while (std::getline(lines, line)) {
    const std::size_t start = line.find_first_not_of(" \t\r");
    if (start != std::string::npos) last = line.substr(start, 300);
  }
  return last;
}

// Registers the library at `path`; returns why it cannot be, or "" when it is registered (now,
// or earlier in this process). One library per process: Paddle aborts the process when a second
// copy of the same operators is loaded.
std::string register_library(const std::string& path) {
  static std::string registered;  // the library this process registered
  if (!registered.empty()) return registered == path ? "" : "another build of them is registered (" + registered + ")";
  try {
    paddle::framework::LoadOpMetaInfoAndRegisterOp(path);
  } catch (const std::exception& error) {
    return path + " could not be loaded (" + last_line(error.what()) + ")";
  }
  registered = path;
  return "";
}
#endif

// Why the export's operators cannot run here, or "" when their library is registered.
std::string usable(const Manifest& manifest, bool sha256) {
  const std::string path = manifest.path(manifest.cpu_ops.library);
  if (!is_file(path)) return path + " is missing";
  verify_files(manifest, {manifest.cpu_ops.library}, sha256);  // a damaged file is an error, as elsewhere
  const std::string mismatch = paddle_mismatch(manifest.cpu_ops);
  return mismatch.empty() ? register_library(path) : mismatch;
}

// Why the operators are off before looking at their library, or "".
std::string switched_off(const Manifest* manifest, const std::string& device, const std::string& engine) {
  if (manifest != nullptr && manifest->cpu_ops.library.empty()) return "the export has none";
  if (device != "cpu") return "--device " + device;
  if (engine != "paddle" && engine != "onednn") return "--engine " + engine;
  const char* value = std::getenv(kSwitch);
  if (value != nullptr && std::string(value) == "0") return std::string(kSwitch) + "=0";
  return "";
}

}  // namespace

std::string use_cpu_operators(Manifest* manifest, const std::string& device, const std::string& engine, bool sha256) {
  const std::string prefix = "C++ CPU operators: ";
  std::string off = switched_off(manifest, device, engine);
  if (!off.empty()) return prefix + "off (" + off + ")";
  if (manifest == nullptr) return prefix + "on where an export has them";
  off = usable(*manifest, sha256);
  if (!off.empty()) {
    std::cerr << "warning: " << manifest->folder << ": " << prefix << off
              << "; running the programs without them (Paddle's own CPU kernels)" << std::endl;
    return prefix + "off (" + off + ")";
  }
  std::vector<ProgramFiles*> programs = {&manifest->text_encoder, &manifest->vae_decoder};
  for (ProgramFiles& expert : manifest->experts) programs.push_back(&expert);
  for (ProgramFiles* program : programs) {
    if (program->model_with_cpu_ops.empty()) continue;
    program->model = program->model_with_cpu_ops;
    program->params = program->params_with_cpu_ops;
  }
  return prefix + "on (" + manifest->cpu_ops.library + ")";
}

}  // namespace ernie_vilg2
