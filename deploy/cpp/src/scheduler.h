// The samplers, built from an export's resolved settings (the manifest's `samplers`, written
// by the exporter from ernie_vilg2.models.factory.build_sampler: no rules or defaults here),
// with the semantics of PPDiffusers 0.29's schedulers, computed with the same float32
// operations in the same order as Paddle does:
//   ddim: DDIMScheduler, eta = 0. Bit for bit equal to Paddle's for the linear beta schedule.
//   dpm:  DPMSolverMultistepScheduler, dpmsolver++, multistep, order 1 or 2 (midpoint or
//         heun, lower_order_final, euler_at_final). Paddle computes its sigma table with a
//         vectorised pow that differs from std::pow in the last bit for some timesteps, so
//         this one agrees to about 1e-7 relative, not bit for bit.
// tests/deploy/test_deploy_schedulers.py compares both with PPDiffusers step by step (through the
// scheduler_trace tool, deploy/cpp/tools/scheduler_trace.cc).
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace ernie_vilg2 {

// One sampler's settings, as the manifest's `samplers.<name>` holds them (PPDiffusers' config
// names; read and range-checked by read_samplers in sampler_settings.h).
struct SamplerSettings {
  std::string name;                   // ddim | dpm
  int max_steps = 0;                  // the most steps a run may take
  int num_train_timesteps = 0;
  std::string beta_schedule;          // linear | scaled_linear | squaredcos_cap_v2
  double beta_start = 0, beta_end = 0;
  std::vector<double> trained_betas;  // empty: the betas of beta_schedule
  std::string prediction_type;        // epsilon | v_prediction | sample
  std::string timestep_spacing;       // leading | linspace | trailing
  int steps_offset = 0;
  // ddim
  bool clip_sample = false, set_alpha_to_one = false;
  double clip_sample_range = 0;
  // dpm (algorithm_type dpmsolver++)
  int solver_order = 0;               // 1 | 2
  std::string solver_type;            // midpoint | heun
  bool lower_order_final = false, euler_at_final = false;
};

class Scheduler {
 public:
  virtual ~Scheduler() = default;
  // The timesteps of a run of `steps` steps, first to last (set_timesteps); throws
  // std::runtime_error if the spacing and offset reach outside [0, T).
  virtual std::vector<int> timesteps(int steps) const = 0;
  // Starts a run of `steps` steps (clears the multistep history).
  virtual void begin(int steps) = 0;
  // One step in place: `sample` becomes the sample at the next timestep, given the model's
  // output at timestep `t` (the run's timesteps in order).
  virtual void step(const std::vector<float>& model_output, int t, std::vector<float>* sample) = 0;

 protected:
  explicit Scheduler(const SamplerSettings& settings);
  SamplerSettings settings_;
  std::vector<float> alphas_cumprod_;
};

// The sampler of `settings` (checked by read_samplers; throws std::runtime_error for a value
// it does not implement).
std::unique_ptr<Scheduler> make_scheduler(const SamplerSettings& settings);

}  // namespace ernie_vilg2
