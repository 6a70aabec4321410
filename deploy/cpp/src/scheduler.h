// Samplers with the semantics of PPDiffusers 0.29's schedulers as the project's pipeline
// builds them (ernie_vilg2.models.factory.build_sampler), computed with the same float32
// operations in the same order as Paddle does:
//   ddim: DDIMScheduler, clip_sample=False, set_alpha_to_one=False, eta = 0. Bit for bit
//         equal to Paddle's for the linear beta schedule.
//   dpm:  DPMSolverMultistepScheduler, algorithm_type="dpmsolver++", solver_order=2
//         (midpoint or heun, lower_order_final, euler_at_final). Paddle computes its sigma
//         table with a vectorised pow that differs from std::pow in the last bit for some
//         timesteps, so this one agrees to about 1e-7 relative, not bit for bit.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace ernie_vilg2 {

// The scheduler config of the manifest (ppdiffusers names).
struct SchedulerConfig {
  std::string class_name;                    // _class_name of the saved scheduler; empty: unknown
  int num_train_timesteps = 1000;
  double beta_start = 0.0001;
  double beta_end = 0.02;
  std::string beta_schedule = "linear";      // linear | scaled_linear
  std::string prediction_type = "epsilon";   // epsilon | v_prediction | sample
  std::string timestep_spacing;              // leading | linspace | trailing; empty: the sampler's default
  int steps_offset = 0;
  std::string solver_type = "midpoint";      // DPM-Solver++: midpoint | heun
  bool lower_order_final = true;             // DPM-Solver++
  bool euler_at_final = false;               // DPM-Solver++
  // Fields set to something the DPM-Solver++ here does not implement (Karras or Lu
  // sigmas, learned variance, lambda clipping): refused when that sampler is chosen.
  std::vector<std::string> unsupported_by_dpm;
};

class Scheduler {
 public:
  virtual ~Scheduler() = default;
  // The timesteps of a run of `steps` steps, first to last (set_timesteps).
  virtual std::vector<int> timesteps(int steps) const = 0;
  // Starts a run of `steps` steps (clears the multistep history).
  virtual void begin(int steps) = 0;
  // One step in place: `sample` becomes the sample at the next timestep, given the model's
  // output at timestep `t` (the run's timesteps in order).
  virtual void step(const std::vector<float>& model_output, int t, std::vector<float>* sample) = 0;

 protected:
  explicit Scheduler(const SchedulerConfig& config);
  SchedulerConfig config_;
  std::vector<float> alphas_cumprod_;
};

// `sampler` is "ddim" or "dpm"; throws std::runtime_error naming the config field
// ("scheduler.beta_schedule: ...") for settings this runner does not implement. As in
// build_sampler, a config saved by the other scheduler class gives only its noise schedule
// (num_train_timesteps, betas, prediction_type); the sampler's own settings keep their defaults.
std::unique_ptr<Scheduler> make_scheduler(const std::string& sampler, const SchedulerConfig& config);

}  // namespace ernie_vilg2
