// ernie_vilg2_infer: text-to-image with an exported ERNIE-ViLG 2.0 pipeline on Paddle
// Inference. Usage: see options.cc (--help) or deploy/README.md.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "cpu_ops.h"
#include "image.h"
#include "inference_engine.h"
#include "manifest.h"
#include "malloc_tuning.h"
#include "mkl_dispatch.h"
#include "noise.h"
#include "options.h"
#include "pipeline.h"
#include "scheduler.h"
#include "tokenizer.h"
#include "unicode_text.h"

namespace ernie_vilg2 {
namespace {

std::u32string decode_prompt(const std::string& flag, const std::string& text) {
  std::u32string decoded;
  std::size_t bad = 0;
  if (!decode_utf8(text, &decoded, &bad)) {
    throw UserError(flag + ": not valid UTF-8 (byte " + std::to_string(bad) + ")");
  }
  return decoded;
}

// The Python pipeline's check_prompts: a prompt of only whitespace is refused.
void check_not_empty(const std::string& flag, const std::u32string& prompt) {
  for (char32_t c : prompt) {
    if (!has_flag(c, kPySpace)) return;
  }
  throw UserError(flag + ": the prompt is empty");
}

std::string prompt_flag(const Options& options, std::size_t index) {
  return options.prompts.size() > 1 ? "--prompt #" + std::to_string(index + 1) : "--prompt";
}

int tokenize_only(const Options& options, const Manifest& manifest) {
  verify_files(manifest, {manifest.vocab, manifest.text_encoder.model}, options.verify_checksums);
  check_program_sizes(manifest, {}, false);
  TokenizerConfig config = manifest.tokenizer;
  if (options.max_length) config.max_length = options.max_length;
  const Tokenizer tokenizer(config);
  auto print = [&](const std::u32string& prompt) {
    std::cout << nlohmann::json(tokenizer.encode(prompt).ids).dump() << '\n';
  };
  if (!options.prompts.empty()) {
    for (std::size_t i = 0; i < options.prompts.size(); ++i) {
      print(decode_prompt(prompt_flag(options, i), options.prompts[i]));
    }
    return 0;
  }
  std::string line;
  for (int number = 1; std::getline(std::cin, line); ++number) {
    const std::string where = "stdin line " + std::to_string(number);
    nlohmann::json value;
    try {
      value = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& error) {
      if (std::string(error.what()).find("surrogate") != std::string::npos) {
        throw UserError(where + ": a lone UTF-16 surrogate escape (\\ud800-\\udfff) is not a character");
      }
      throw UserError(where + ": expected a JSON string");
    }
    if (!value.is_string()) throw UserError(where + ": expected a JSON string");
    print(decode_prompt(where, value.get<std::string>()));
  }
  return 0;
}

// Removes numbered outputs of an earlier run with the same stem (STEM_<digits>.png) that
// this run did not write, so the folder holds what the captions file lists.
void remove_stale_outputs(const std::string& stem, const std::set<std::string>& written) {
  namespace fs = std::filesystem;
  const fs::path base(stem);
  const fs::path folder = base.has_parent_path() ? base.parent_path() : fs::path(".");
  const std::string prefix = base.filename().string() + "_";
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(folder, error)) {
    const std::string name = entry.path().filename().string();
    if (name.size() <= prefix.size() + 4 || name.compare(0, prefix.size(), prefix) != 0 ||
        name.compare(name.size() - 4, 4, ".png") != 0 || written.count(name)) {
      continue;
    }
    const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - 4);
    if (std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      fs::remove(entry.path(), error);
    }
  }
}

// Writes the grid, the single images beside it and a JSON caption file, as tools/generate.py
// does (the index has as many digits as the image count, at least 3).
void save_images(const Options& options, const std::vector<RgbImage>& images) {
  const std::string stem = options.out.substr(0, options.out.size() - 4);
  const std::string base = stem.substr(stem.find_last_of('/') + 1);
  nlohmann::json record = {{"model", options.model}, {"runner", "ernie_vilg2_infer (C++)"},
                           {"sampler", options.sampler}, {"steps", options.steps},
                           {"guidance", options.guidance.size() == 1 ? nlohmann::json(options.guidance[0])
                                                                     : nlohmann::json(options.guidance)},
                           {"negative_prompt", options.negative_prompt},
                           {"grid", base + ".png"}};
  record["seed"] = options.noise.empty() ? nlohmann::json(options.seed) : nlohmann::json(nullptr);
  record["noise"] = options.noise.empty() ? nlohmann::json(nullptr) : nlohmann::json(options.noise);
  const int digits = std::max<int>(3, static_cast<int>(std::to_string(images.size()).size()));
  std::set<std::string> written;
  for (std::size_t i = 0; i < images.size(); ++i) {
    std::ostringstream number;
    number << std::setw(digits) << std::setfill('0') << i;
    const std::string suffix = "_" + number.str() + ".png";
    write_png(images[i], stem + suffix);
    record["images"][base + suffix] = options.prompts[i];
    written.insert(base + suffix);
  }
  write_png(make_grid(images), options.out);
  const std::string captions = stem + ".json", temporary = captions + ".tmp";
  std::FILE* file = std::fopen(temporary.c_str(), "w");
  const std::string text = record.dump(2);
  if (!file || std::fputs(text.c_str(), file) < 0 || std::fclose(file) != 0 ||
      std::rename(temporary.c_str(), captions.c_str()) != 0) {
    throw UserError("--out: cannot write " + captions);
  }
  remove_stale_outputs(stem, written);
  std::cout << "wrote grid " << options.out << " and " << images.size() << " image" << (images.size() > 1 ? "s" : "")
            << " beside it (" << base << "_" << std::string(digits - 1, '0') << "0.png ...), captions " << captions
            << '\n';
}

int generate(const Options& options, const Manifest& manifest) {
  std::vector<std::string> files = {manifest.vocab, manifest.text_encoder.model, manifest.text_encoder.params,
                                    manifest.vae_decoder.model, manifest.vae_decoder.params};
  const auto offered = manifest.samplers.offered.find(options.sampler);
  if (offered == manifest.samplers.offered.end()) {
    std::string names;
    for (const auto& entry : manifest.samplers.offered) names += (names.empty() ? "" : ", ") + entry.first;
    throw UserError("--sampler " + options.sampler + ": not offered by this export (manifest field 'samplers' " +
                    "offers: " + names + "; the exporter's log says why)");
  }
  const SamplerSettings& settings = offered->second;
  if (options.steps > settings.max_steps) {
    throw UserError("--steps: must be <= " + std::to_string(settings.max_steps) + " with " + options.sampler +
                    " (num_train_timesteps " + std::to_string(settings.num_train_timesteps) + "), got " +
                    std::to_string(options.steps));
  }
  std::unique_ptr<Scheduler> scheduler;
  std::vector<int> timesteps;
  try {
    scheduler = make_scheduler(settings);
    timesteps = scheduler->timesteps(options.steps);
  } catch (const std::runtime_error& error) {
    throw UserError(manifest.path("manifest.json") + ": " + error.what());
  }
  std::set<int> experts;
  for (int t : timesteps) experts.insert(manifest.expert_for_timestep(t));
  for (int expert : experts) {
    files.push_back(manifest.experts[expert].model);
    files.push_back(manifest.experts[expert].params);
  }
  verify_files(manifest, files, options.verify_checksums);
  check_program_sizes(manifest, experts, true);  // before anything is sized by the manifest
  const Tokenizer tokenizer(manifest.tokenizer);

  GenerationRequest request;
  for (std::size_t i = 0; i < options.prompts.size(); ++i) {
    request.prompts.push_back(decode_prompt(prompt_flag(options, i), options.prompts[i]));
    check_not_empty(prompt_flag(options, i), request.prompts.back());
  }
  request.negative_prompt = decode_prompt("--negative-prompt", options.negative_prompt);
  std::cerr << truncation_warning(tokenizer, request.prompts);
  request.steps = options.steps;
  const std::size_t experts_count = static_cast<std::size_t>(manifest.num_experts);
  if (options.guidance.size() != 1 && options.guidance.size() != experts_count) {
    throw UserError("--guidance: expected one number or " + std::to_string(experts_count) + " (one per expert), got " +
                    std::to_string(options.guidance.size()));
  }
  for (std::size_t i = 0; i < experts_count; ++i) {
    request.guidance.push_back(static_cast<float>(options.guidance[options.guidance.size() == 1 ? 0 : i]));
  }
  const std::vector<std::int64_t> shape = {static_cast<std::int64_t>(request.prompts.size()), manifest.latent_channels,
                                           manifest.latent_height, manifest.latent_width};
  request.noise = options.noise.empty() ? generate_noise(options.seed, shape[0] * shape[1] * shape[2] * shape[3])
                                        : read_noise(options.noise, shape);

  const auto load_start = std::chrono::steady_clock::now();
  EngineOptions engine;
  engine.threads = options.threads;
  engine.gpu_id = options.device == "gpu" ? options.gpu_id : -1;
  engine.cpu_engine = options.engine;
  Pipeline pipeline(manifest, tokenizer, *scheduler, timesteps, engine);
  const double load_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - load_start).count();

  // Batches of --batch-size prompts, each with its rows of the noise (as the Python
  // runner's generate_images does); timings add up over the batches. The first run of each
  // program includes Paddle's warm-up; --repeat shows the warm timings too.
  std::vector<RgbImage> images;
  std::vector<nlohmann::json> timing_lines;
  const std::size_t row = static_cast<std::size_t>(shape[1] * shape[2] * shape[3]);
  for (int run = 0; run < options.repeat; ++run) {
    Timing timing;
    timing.step_ms.assign(timesteps.size(), 0.0);
    images.clear();
    for (std::size_t first = 0; first < request.prompts.size(); first += options.batch_size) {
      const std::size_t last = std::min(request.prompts.size(), first + options.batch_size);
      GenerationRequest batch = request;
      batch.prompts.assign(request.prompts.begin() + first, request.prompts.begin() + last);
      batch.noise.assign(request.noise.begin() + first * row, request.noise.begin() + last * row);
      Timing part;
      for (RgbImage& image : pipeline.generate(batch, &part)) images.push_back(std::move(image));
      timing.text_encoder_ms += part.text_encoder_ms;
      timing.decoder_ms += part.decoder_ms;
      timing.total_ms += part.total_ms;
      for (std::size_t i = 0; i < part.step_ms.size(); ++i) timing.step_ms[i] += part.step_ms[i];
    }
    timing_lines.push_back({{"load_ms", load_ms},          {"text_encoder_ms", timing.text_encoder_ms},
                            {"step_ms", timing.step_ms},   {"decoder_ms", timing.decoder_ms},
                            {"total_ms", timing.total_ms}, {"batch", request.prompts.size()},
                            {"steps", options.steps},      {"run", run + 1}});
  }
  save_images(options, images);
  if (options.timing) {
    for (const nlohmann::json& line : timing_lines) std::cout << line.dump() << '\n';
    std::cout << std::flush;
  }
  return 0;
}

int run(int argc, char** argv) {
  const Options options = parse_args(argc, argv);
  const bool malloc_set_here = keep_freed_memory();
  const bool avx2_set_here = prefer_mkl_avx2();  // before the programs make MKL's first call
  if (options.tokenize_only && !options.version) return tokenize_only(options, load_manifest(options.model));
  const std::string executor_gc = batch_freed_tensors();  // before the first predictor runs
  std::optional<Manifest> manifest;  // --version describes the operators of --model if given
  if (!options.model.empty()) manifest = load_manifest(options.model);
  // Before the first predictor: registers the operators and picks their programs where they run.
  const std::string operators = use_cpu_operators(manifest ? &*manifest : nullptr, options.device, options.engine,
                                                  options.verify_checksums);
  if (options.version) {
    std::cout << "ernie_vilg2_infer: " << paddle_description() << ", tokenizer tables Unicode " << unicode_version()
              << ", " << operators << ", " << executor_gc << ", " << malloc_tuning_description(malloc_set_here) << ", "
              << mkl_dispatch_description(avx2_set_here) << '\n';
    return 0;
  }
  return generate(options, *manifest);
}

}  // namespace
}  // namespace ernie_vilg2

int main(int argc, char** argv) {
  try {
    return ernie_vilg2::run(argc, argv);
  } catch (const ernie_vilg2::UserError& error) {
    std::cerr << "error: " << error.what() << std::endl;
    return 2;
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << std::endl;
    return 1;
  }
}
