// The command line of ernie_vilg2_infer (options.h).
#include "options.h"

#include <cmath>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <set>
#include <sstream>
#include <stdexcept>

#include "errors.h"

namespace ernie_vilg2 {
namespace {

constexpr const char* kUsage = R"(usage: ernie_vilg2_infer --model EXPORT_DIR --prompt TEXT [--prompt TEXT ...] [options]
       ernie_vilg2_infer --model EXPORT_DIR --tokenize-only [--prompt TEXT ...]

Generates images with a pipeline exported by tools/export_model.py.

  --model DIR             export folder (with manifest.json)
  --prompt TEXT           a prompt (UTF-8, Chinese or English); repeat for several
  --negative-prompt TEXT  negative prompt for every image (default: empty)
  --seed N                seed of the runner's own noise generator (default 0)
  --noise FILE.npy        initial noise [images, C, h, w] instead, e.g. from the Python
                          runner's --save-noise (then both runners give the same images)
  --steps N               sampling steps (default 25)
  --guidance G[,G...]     classifier-free guidance scale; 1 turns it off (default 2.1); or one
                          per expert, separated by commas (expert 0, the least noisy, first)
  --sampler dpm|ddim      DPM-Solver++ (multistep) or DDIM, as the export resolved them (default dpm)
  --batch-size N          prompts per run of the programs (default 4)
  --out FILE.png          the image; with several prompts the grid, with the single
                          images FILE_000.png ... and FILE.json beside it (default out.png)
  --device cpu|gpu        where the programs run (default cpu; gpu needs a GPU build of Paddle)
  --gpu-id N              which GPU with --device gpu (default 0)
  --threads N             CPU math library threads (default 1)
  --engine paddle|onednn  CPU kernels: Paddle's native ones (default; the dynamic graph's
                          results bit for bit) or oneDNN (faster, about 1e-6 from them)
  --verify-checksums      check the SHA-256 sums of the files (sizes are always checked)
  --timing                print one JSON line of timings (milliseconds) per run
  --repeat N              generate N times with the same inputs (warm timings; default 1)
  --tokenize-only         print each prompt's token ids as a JSON list, one line per prompt;
                          without --prompt, reads prompts from stdin, one JSON string a line
  --max-length N          with --tokenize-only: pad/cut to N tokens instead of the model's
  --version               print the versions and the setup (with --model: whether its
                          programs run with the C++ CPU operators) and exit
)";

// --max-length's bound: the longest a text encoder's position table is in practice.
constexpr int kMaxTokenizeLength = 65536;

// An integer flag in [minimum, maximum]; the default maximum is what an int holds.
long long parse_integer(const std::string& flag, const std::string& text, long long minimum,
                        long long maximum = std::numeric_limits<int>::max()) {
  std::size_t used = 0;
  long long value = 0;
  bool out_of_range = false;
  try {
    value = std::stoll(text, &used);
  } catch (const std::out_of_range&) {
    out_of_range = true;
  } catch (const std::exception&) {
    used = 0;
  }
  if (!out_of_range && (used == 0 || used != text.size())) {
    throw UserError(flag + ": expected an integer, got '" + text + "'");
  }
  if (!out_of_range && value < minimum) {
    throw UserError(flag + ": must be >= " + std::to_string(minimum) + ", got " + text);
  }
  if (out_of_range || value > maximum) {
    throw UserError(flag + ": must be between " + std::to_string(minimum) + " and " + std::to_string(maximum) +
                    ", got " + text);
  }
  return value;
}

double parse_number(const std::string& flag, const std::string& text) {
  std::size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || !std::isfinite(value)) {
    throw UserError(flag + ": expected a number, got '" + text + "'");
  }
  return value;
}

// value, when it is one of the flag's two choices.
std::string one_of(const std::string& flag, const std::string& value, const std::string& a, const std::string& b) {
  if (value != a && value != b) throw UserError(flag + ": expected " + a + " or " + b + ", got '" + value + "'");
  return value;
}

}  // namespace

Options parse_args(int argc, char** argv) {
  Options options;
  const std::set<std::string> switches = {"--timing", "--tokenize-only", "--verify-checksums", "--version", "--help"};
  const std::set<std::string> with_value = {"--model", "--prompt", "--negative-prompt", "--seed", "--noise",
                                            "--steps", "--guidance", "--out", "--threads", "--sampler",
                                            "--batch-size", "--device", "--gpu-id", "--repeat",
                                            "--engine", "--max-length"};
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i], value;
    const auto equals = flag.find('=');
    const bool inline_value = flag.rfind("--", 0) == 0 && equals != std::string::npos;
    if (inline_value) {
      value = flag.substr(equals + 1);
      flag = flag.substr(0, equals);
    }
    if (switches.count(flag)) {
      if (inline_value) throw UserError(flag + ": takes no value");
      if (flag == "--help") {
        std::cout << kUsage;
        std::exit(0);
      }
      (flag == "--timing" ? options.timing
       : flag == "--tokenize-only" ? options.tokenize_only
       : flag == "--verify-checksums" ? options.verify_checksums
                                      : options.version) = true;
      continue;
    }
    if (!with_value.count(flag)) throw UserError("unknown option " + flag + " (see --help)");
    if (!inline_value) {
      if (i + 1 >= argc) throw UserError(flag + ": expected a value (see --help)");
      value = argv[++i];
    }
    if (flag == "--model") {
      options.model = value;
    } else if (flag == "--prompt") {
      options.prompts.push_back(value);
    } else if (flag == "--negative-prompt") {
      options.negative_prompt = value;
    } else if (flag == "--seed") {
      // The seeds the Python runner takes (NumPy's generators): [0, 2**63 - 1].
      options.seed = static_cast<std::uint64_t>(parse_integer(flag, value, 0, std::numeric_limits<long long>::max()));
    } else if (flag == "--noise") {
      options.noise = value;
    } else if (flag == "--steps") {
      options.steps = static_cast<int>(parse_integer(flag, value, 1));
    } else if (flag == "--guidance") {
      options.guidance.clear();
      std::stringstream parts(value);
      for (std::string part; std::getline(parts, part, ',');) {
        options.guidance.push_back(parse_number(flag, part));
        if (options.guidance.back() < 0) throw UserError("--guidance: must be >= 0, got " + part);
      }
      if (options.guidance.empty() || value.back() == ',') throw UserError("--guidance: expected a number, got ''");
    } else if (flag == "--out") {
      options.out = value;
    } else if (flag == "--threads") {
      options.threads = static_cast<int>(parse_integer(flag, value, 1));
    } else if (flag == "--sampler") {
      options.sampler = one_of(flag, value, "dpm", "ddim");
    } else if (flag == "--repeat") {
      options.repeat = static_cast<int>(parse_integer(flag, value, 1));
    } else if (flag == "--batch-size") {
      options.batch_size = static_cast<int>(parse_integer(flag, value, 1));
    } else if (flag == "--device") {
      options.device = one_of(flag, value, "cpu", "gpu");
    } else if (flag == "--engine") {
      options.engine = one_of(flag, value, "paddle", "onednn");
    } else if (flag == "--max-length") {
      options.max_length = static_cast<int>(parse_integer(flag, value, 3, kMaxTokenizeLength));
    } else if (flag == "--gpu-id") {
      options.gpu_id = static_cast<int>(parse_integer(flag, value, 0));
    }
  }
  if (options.version) return options;
  if (options.device == "gpu" && options.engine != "paddle") {
    throw UserError("--engine " + options.engine + ": runs on the CPU only (--device cpu)");
  }
  if (options.model.empty()) throw UserError("--model: required (the export folder)");
  if (options.max_length && !options.tokenize_only) throw UserError("--max-length: only with --tokenize-only");
  if (!options.tokenize_only) {
    if (options.prompts.empty()) throw UserError("--prompt: no prompt given");
    const std::string& out = options.out;
    if (out.size() < 5 || out.compare(out.size() - 4, 4, ".png") != 0) {
      throw UserError("--out: must be a .png file name, got '" + out + "'");
    }
  }
  return options;
}

}  // namespace ernie_vilg2
