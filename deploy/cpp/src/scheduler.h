// DDIM sampling steps with the semantics of ppdiffusers' DDIMScheduler as the pipeline
// builds it (clip_sample=False, set_alpha_to_one=False, eta=0), in the same float32
// operations in the same order, so that a step gives the same bits as Paddle's.
#pragma once

#include <string>
#include <vector>

namespace ernie_vilg2 {

struct SchedulerConfig {
  int num_train_timesteps = 1000;
  double beta_start = 0.0001;
  double beta_end = 0.02;
  std::string beta_schedule = "linear";  // linear | scaled_linear
  int steps_offset = 0;
  std::string prediction_type = "epsilon";  // epsilon | v_prediction | sample
  std::string timestep_spacing = "leading";  // leading | linspace | trailing
};

class DDIMScheduler {
 public:
  // Throws std::runtime_error naming the field ("scheduler.beta_schedule: ...").
  explicit DDIMScheduler(const SchedulerConfig& config);

  // The timesteps of a run of `steps` steps, first to last (DDIMScheduler.set_timesteps).
  std::vector<int> timesteps(int steps) const;

  // One step in place: sample <- the sample at the previous timestep, given the model's
  // output for timestep t in a run of `steps` steps.
  void step(const std::vector<float>& model_output, int t, int steps, std::vector<float>* sample) const;

  const SchedulerConfig& config() const { return config_; }

 private:
  SchedulerConfig config_;
  std::vector<float> alphas_cumprod_;
};

}  // namespace ernie_vilg2
