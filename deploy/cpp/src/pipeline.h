// The sampling loop of ErnieViLG2Pipeline over exported programs: text encoder, one expert
// U-Net per step chosen by the timestep router, classifier-free guidance, the sampler's
// steps (DDIM or DPM-Solver++), VAE decoder.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "image.h"
#include "inference_engine.h"
#include "manifest.h"
#include "scheduler.h"
#include "tokenizer.h"

namespace ernie_vilg2 {

struct GenerationRequest {
  std::vector<std::u32string> prompts;
  std::u32string negative_prompt;  // for every prompt; empty = unconditional
  int steps = 25;
  std::vector<float> guidance;     // one scale per expert; all 1 disable classifier-free guidance
  std::vector<float> noise;        // [prompts, C, h, w]
};

struct Timing {
  double text_encoder_ms = 0, decoder_ms = 0, total_ms = 0;
  std::vector<double> step_ms;
};

class Pipeline {
 public:
  // Loads the text encoder, the VAE decoder and the experts that `timesteps` route to.
  Pipeline(const Manifest& manifest, const Tokenizer& tokenizer, Scheduler& scheduler,
           const std::vector<int>& timesteps, const EngineOptions& options);

  std::vector<RgbImage> generate(const GenerationRequest& request, Timing* timing);

 private:
  std::vector<float> encode_text(const std::vector<std::u32string>& texts, std::vector<int>* shape);

  const Manifest& manifest_;
  const Tokenizer& tokenizer_;
  Scheduler& scheduler_;
  std::unique_ptr<Program> text_encoder_, vae_decoder_;
  std::map<int, std::unique_ptr<Program>> experts_;
};

}  // namespace ernie_vilg2
