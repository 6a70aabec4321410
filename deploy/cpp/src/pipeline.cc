#include "pipeline.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>
#include <set>
#include <stdexcept>

#include "errors.h"

namespace ernie_vilg2 {
namespace {

using Clock = std::chrono::steady_clock;

double elapsed_ms(Clock::time_point since) {
  return std::chrono::duration<double, std::milli>(Clock::now() - since).count();
}

std::unique_ptr<Program> load(const Manifest& manifest, const ProgramFiles& files,
                              const std::vector<std::string>& inputs, const EngineOptions& options) {
  return std::make_unique<Program>(files.model, manifest.path(files.model), manifest.path(files.params), inputs,
                                   options);
}

}  // namespace

Pipeline::Pipeline(const Manifest& manifest, const Tokenizer& tokenizer, Scheduler& scheduler,
                   const std::vector<int>& timesteps, const EngineOptions& options)
    : manifest_(manifest), tokenizer_(tokenizer), scheduler_(scheduler) {
  text_encoder_ = load(manifest, manifest.text_encoder, {"input_ids"}, options);
  std::set<int> used;
  for (int t : timesteps) used.insert(manifest.expert_for_timestep(t));
  for (int expert : used) {
    experts_[expert] = load(manifest, manifest.experts[expert], {"sample", "timestep", "encoder_hidden_states"}, options);
  }
  vae_decoder_ = load(manifest, manifest.vae_decoder, {"latents"}, options);
}

std::vector<float> Pipeline::encode_text(const std::vector<std::u32string>& texts, std::vector<int>* shape) {
  const int length = tokenizer_.config().max_length;
  std::vector<std::int64_t> ids;
  for (std::size_t i = 0; i < texts.size(); ++i) {
    const Encoding encoding = tokenizer_.encode(texts[i]);  // truncation is reported once by the caller
    ids.insert(ids.end(), encoding.ids.begin(), encoding.ids.end());
  }
  text_encoder_->set_input("input_ids", {static_cast<int>(texts.size()), length}, ids.data());
  return text_encoder_->run(shape);
}

std::vector<RgbImage> Pipeline::generate(const GenerationRequest& request, Timing* timing) {
  const auto start = Clock::now();
  const int batch = static_cast<int>(request.prompts.size());
  const bool guided = std::any_of(request.guidance.begin(), request.guidance.end(), [](float g) { return g != 1.0f; });

  // Text: the prompts, and with guidance the negative prompt for each, encoded apart (as
  // the Python pipeline does) and stacked [unconditional; conditional].
  auto phase = Clock::now();
  std::vector<int> context_shape;
  std::vector<float> context = encode_text(request.prompts, &context_shape);
  if (guided) {
    std::vector<int> uncond_shape;
    std::vector<float> uncond =
        encode_text(std::vector<std::u32string>(batch, request.negative_prompt), &uncond_shape);
    context.insert(context.begin(), uncond.begin(), uncond.end());
    context_shape[0] *= 2;
  }
  timing->text_encoder_ms = elapsed_ms(phase);

  const int channels = manifest_.latent_channels;
  std::vector<float> latents = request.noise;  // init_noise_sigma is 1 for both samplers
  const std::size_t per_batch = latents.size();
  std::vector<int> sample_shape = {batch * (guided ? 2 : 1), channels, manifest_.latent_height,
                                   manifest_.latent_width};
  std::vector<float> model_input;
  scheduler_.begin(request.steps);
  for (int t : scheduler_.timesteps(request.steps)) {
    phase = Clock::now();
    model_input = latents;
    if (guided) model_input.insert(model_input.end(), latents.begin(), latents.end());
    const int index = manifest_.expert_for_timestep(t);
    Program& expert = *experts_.at(index);
    const float timestep = static_cast<float>(t);
    expert.set_input("sample", sample_shape, model_input.data());
    expert.set_input("timestep", {1}, &timestep);
    expert.set_input("encoder_hidden_states", context_shape, context.data());
    std::vector<int> eps_shape;
    std::vector<float> eps = expert.run(&eps_shape);
    if (eps_shape != sample_shape) throw std::runtime_error("expert for t=" + std::to_string(t) + ": unexpected output shape");
    if (guided) {  // eps = eps_uncond + g * (eps_text - eps_uncond), in float32, g this expert's scale
      const float scale = request.guidance.at(index);
      for (std::size_t i = 0; i < per_batch; ++i) {
        const float uncond = eps[i], text = eps[per_batch + i];
        eps[i] = uncond + scale * (text - uncond);
      }
      eps.resize(per_batch);
    }
    scheduler_.step(eps, t, &latents);
    // NaN or inf stays so to the end and would be written as a black image (the Python rule).
    if (!std::all_of(latents.begin(), latents.end(), [](float v) { return std::isfinite(v); })) {
      throw UserError("sampling produced non-finite latents (NaN/inf) at step " +
                      std::to_string(timing->step_ms.size() + 1) + " of " + std::to_string(request.steps) +
                      "; check the guidance scale, the number of steps and the model weights");
    }
    timing->step_ms.push_back(elapsed_ms(phase));
  }

  phase = Clock::now();
  const float scaling = static_cast<float>(manifest_.scaling_factor);
  for (float& value : latents) value = value / scaling;
  vae_decoder_->set_input("latents", {batch, channels, manifest_.latent_height, manifest_.latent_width},
                          latents.data());
  std::vector<int> image_shape;
  const std::vector<float> decoded = vae_decoder_->run(&image_shape);
  if (image_shape.size() != 4 || image_shape[0] != batch || image_shape[1] != 3) {
    throw std::runtime_error(manifest_.vae_decoder.model + ": expected an output of shape [batch, 3, H, W]");
  }
  std::vector<RgbImage> images;
  for (int i = 0; i < batch; ++i) images.push_back(decoder_output_to_image(decoded, i, image_shape[2], image_shape[3]));
  timing->decoder_ms = elapsed_ms(phase);
  timing->total_ms = elapsed_ms(start);
  return images;
}

}  // namespace ernie_vilg2
