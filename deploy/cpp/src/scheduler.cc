#include "scheduler.h"

#include <cmath>
#include <stdexcept>

namespace ernie_vilg2 {
namespace {

// paddle.linspace(start, stop, n, dtype=float32) on CPU: float32 arithmetic, the first
// half counted up from start and the second half down from stop.
std::vector<float> paddle_linspace(double start, double stop, int n) {
  const float first = static_cast<float>(start), last = static_cast<float>(stop);
  const float step = n > 1 ? (last - first) / static_cast<float>(n - 1) : 0.0f;
  std::vector<float> values(n);
  for (int i = 0; i < n; ++i) {
    values[i] = i < n / 2 ? first + step * static_cast<float>(i) : last - step * static_cast<float>(n - 1 - i);
  }
  return values;
}

// Paddle's pow/log/exp of a 0-D float32 tensor are std::pow/log/exp of float; the
// schedulers apply them to 0-D tensors (sqrtf differs from pow(x, 0.5) in the last bit
// for some inputs).
float pow_f(float x, float y) { return std::pow(x, y); }

// np.linspace(0, stop, count).round() (round half to even; the last value exactly stop).
std::vector<int> rounded_linspace(int stop, int count) {
  std::vector<int> values;
  const double step = count > 1 ? static_cast<double>(stop) / (count - 1) : 0.0;
  for (int i = 0; i < count; ++i) {
    values.push_back(static_cast<int>(std::nearbyint(count > 1 && i == count - 1 ? stop : i * step)));
  }
  return values;
}

// np.round(np.arange(n, 0, -n / steps)) - 1, in numpy's arithmetic (which can give one
// value more than `steps`, ending at -1: rejected by the caller's range check).
std::vector<int> trailing(int n, int steps) {
  const double step = -static_cast<double>(n) / steps;
  const int count = static_cast<int>(std::ceil((0.0 - n) / step));
  std::vector<int> values;
  for (int i = 0; i < count; ++i) values.push_back(static_cast<int>(std::nearbyint(n + i * step)) - 1);
  return values;
}

void check_range(const std::vector<int>& timesteps, const SchedulerConfig& config, int steps) {
  const int n = config.num_train_timesteps;
  for (int t : timesteps) {
    if (t < 0 || t >= n) {
      throw std::runtime_error("scheduler: with timestep_spacing '" + config.timestep_spacing + "' and steps_offset " +
                               std::to_string(config.steps_offset) + ", a " + std::to_string(steps) +
                               "-step run has timestep " + std::to_string(t) + ", outside 0.." + std::to_string(n - 1));
    }
  }
}

class DDIM : public Scheduler {
 public:
  explicit DDIM(const SchedulerConfig& config) : Scheduler(config) {
    if (config_.timestep_spacing.empty()) config_.timestep_spacing = "leading";
  }

  std::vector<int> timesteps(int steps) const override {
    const int n = config_.num_train_timesteps;
    std::vector<int> out;
    if (config_.timestep_spacing == "leading") {
      for (int i = steps - 1; i >= 0; --i) out.push_back(i * (n / steps) + config_.steps_offset);
    } else if (config_.timestep_spacing == "linspace") {
      const std::vector<int> values = rounded_linspace(n - 1, steps);
      out.assign(values.rbegin(), values.rend());
    } else {
      out = trailing(n, steps);
    }
    check_range(out, config_, steps);
    return out;
  }

  void begin(int steps) override { steps_ = steps; }

  void step(const std::vector<float>& model_output, int t, std::vector<float>* sample) override {
    const int prev = t - config_.num_train_timesteps / steps_;
    const float alpha_t = alphas_cumprod_[t];
    // set_alpha_to_one=False: the last step uses alphas_cumprod[0].
    const float alpha_prev = prev >= 0 ? alphas_cumprod_[prev] : alphas_cumprod_[0];
    const float beta_t = 1.0f - alpha_t;
    const float sqrt_alpha_t = pow_f(alpha_t, 0.5f), sqrt_beta_t = pow_f(beta_t, 0.5f);
    const float sqrt_alpha_prev = pow_f(alpha_prev, 0.5f);
    // eta = 0: std_dev_t = 0, so the direction coefficient is (1 - alpha_prev - 0) ** 0.5.
    const float direction_coef = pow_f(1.0f - alpha_prev - 0.0f, 0.5f);
    const bool predicts_epsilon = config_.prediction_type == "epsilon";
    const bool predicts_sample = config_.prediction_type == "sample";
    std::vector<float>& x = *sample;
    for (std::size_t i = 0; i < x.size(); ++i) {
      const float out = model_output[i];
      float original, epsilon;
      if (predicts_epsilon) {
        original = (x[i] - sqrt_beta_t * out) / sqrt_alpha_t;
        epsilon = out;
      } else if (predicts_sample) {
        original = out;
        epsilon = (x[i] - sqrt_alpha_t * original) / sqrt_beta_t;
      } else {  // v_prediction
        original = sqrt_alpha_t * x[i] - sqrt_beta_t * out;
        epsilon = sqrt_alpha_t * out + sqrt_beta_t * x[i];
      }
      x[i] = sqrt_alpha_prev * original + direction_coef * epsilon;
    }
  }

 private:
  int steps_ = 1;
};

class DPMSolverPlusPlus : public Scheduler {
 public:
  explicit DPMSolverPlusPlus(const SchedulerConfig& config) : Scheduler(config) {
    if (config_.timestep_spacing.empty()) config_.timestep_spacing = "linspace";
    if (!config_.unsupported_by_dpm.empty()) {
      throw std::runtime_error("scheduler." + config_.unsupported_by_dpm[0] +
                               ": is set, which the C++ runner's DPM-Solver++ does not implement (use --sampler ddim)");
    }
    if (config_.solver_type != "midpoint" && config_.solver_type != "heun") {
      throw std::runtime_error("scheduler.solver_type: '" + config_.solver_type + "' is not supported (midpoint, heun)");
    }
  }

  // As DPMSolverMultistepScheduler.set_timesteps with lambda_min_clipped = -inf: steps + 1
  // points, the last one dropped.
  std::vector<int> timesteps(int steps) const override {
    const int n = config_.num_train_timesteps;
    std::vector<int> out;
    if (config_.timestep_spacing == "linspace") {
      const std::vector<int> values = rounded_linspace(n - 1, steps + 1);
      for (int i = steps; i >= 1; --i) out.push_back(values[i]);
    } else if (config_.timestep_spacing == "leading") {
      const int ratio = n / (steps + 1);
      for (int i = steps; i >= 1; --i) out.push_back(i * ratio + config_.steps_offset);
    } else {
      out = trailing(n, steps);
    }
    check_range(out, config_, steps);
    return out;
  }

  void begin(int steps) override {
    timesteps_ = timesteps(steps);
    // sigma = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5 at each timestep, then the
    // final one from alphas_cumprod[0].
    sigmas_.clear();
    for (int t : timesteps_) sigmas_.push_back(sigma_of(alphas_cumprod_[t]));
    sigmas_.push_back(sigma_of(alphas_cumprod_[0]));
    // _init_step_index: the first timestep's index, the second one if it occurs twice.
    step_index_ = 0;
    for (std::size_t i = 1; i < timesteps_.size(); ++i) {
      if (timesteps_[i] == timesteps_[0]) {
        step_index_ = i;
        break;
      }
    }
    previous_.clear();
    lower_order_nums_ = 0;
  }

  void step(const std::vector<float>& model_output, int /*t*/, std::vector<float>* sample) override {
    const std::size_t n = timesteps_.size(), k = step_index_;
    if (k + 1 >= sigmas_.size()) throw std::runtime_error("DPM-Solver++: more steps than timesteps");
    const bool final_step =
        k == n - 1 && (config_.euler_at_final || (config_.lower_order_final && n < 15));
    std::vector<float> x0 = model_to_x0(model_output, *sample, sigmas_[k]);
    if (lower_order_nums_ < 1 || final_step) {
      first_order(x0, k, sample);
    } else {
      second_order(x0, k, sample);
    }
    previous_ = std::move(x0);
    if (lower_order_nums_ < 2) ++lower_order_nums_;
    ++step_index_;
  }

 private:
  struct AlphaSigma {
    float alpha, sigma, lambda;
  };

  static float sigma_of(float alpha_cumprod) { return pow_f((1.0f - alpha_cumprod) / alpha_cumprod, 0.5f); }

  // _sigma_to_alpha_sigma_t, and lambda = log(alpha) - log(sigma).
  static AlphaSigma alpha_sigma(float sigma) {
    const float alpha = 1.0f / pow_f(pow_f(sigma, 2.0f) + 1.0f, 0.5f);
    const float sigma_t = sigma * alpha;
    return {alpha, sigma_t, std::log(alpha) - std::log(sigma_t)};
  }

  // convert_model_output (dpmsolver++): the predicted clean sample.
  std::vector<float> model_to_x0(const std::vector<float>& output, const std::vector<float>& sample,
                                 float sigma) const {
    if (config_.prediction_type == "sample") return output;
    const AlphaSigma s = alpha_sigma(sigma);
    std::vector<float> x0(output.size());
    for (std::size_t i = 0; i < x0.size(); ++i) {
      x0[i] = config_.prediction_type == "epsilon" ? (sample[i] - s.sigma * output[i]) / s.alpha
                                                   : s.alpha * sample[i] - s.sigma * output[i];
    }
    return x0;
  }

  void first_order(const std::vector<float>& x0, std::size_t k, std::vector<float>* sample) const {
    const AlphaSigma t = alpha_sigma(sigmas_[k + 1]), s = alpha_sigma(sigmas_[k]);
    const float h = t.lambda - s.lambda;
    const float ratio = t.sigma / s.sigma;
    const float coef = t.alpha * (std::exp(-h) - 1.0f);
    std::vector<float>& x = *sample;
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = ratio * x[i] - coef * x0[i];
  }

  void second_order(const std::vector<float>& x0, std::size_t k, std::vector<float>* sample) const {
    const AlphaSigma t = alpha_sigma(sigmas_[k + 1]), s0 = alpha_sigma(sigmas_[k]), s1 = alpha_sigma(sigmas_[k - 1]);
    const float h = t.lambda - s0.lambda, h0 = s0.lambda - s1.lambda;
    const float r0 = h0 / h;
    const float d1_coef = 1.0f / r0;
    const float ratio = t.sigma / s0.sigma;
    const float expm1 = std::exp(-h) - 1.0f;
    const float coef = t.alpha * expm1;
    const bool midpoint = config_.solver_type == "midpoint";
    const float d1_weight = midpoint ? 0.5f * coef : t.alpha * (expm1 / h + 1.0f);
    std::vector<float>& x = *sample;
    for (std::size_t i = 0; i < x.size(); ++i) {
      const float d1 = d1_coef * (x0[i] - previous_[i]);
      const float base = ratio * x[i] - coef * x0[i];
      x[i] = midpoint ? base - d1_weight * d1 : base + d1_weight * d1;
    }
  }

  std::vector<int> timesteps_;
  std::vector<float> sigmas_, previous_;
  std::size_t step_index_ = 0;
  int lower_order_nums_ = 0;
};

}  // namespace

Scheduler::Scheduler(const SchedulerConfig& config) : config_(config) {
  const int n = config.num_train_timesteps;
  if (n < 1) throw std::runtime_error("scheduler.num_train_timesteps: must be >= 1");
  std::vector<float> betas;
  if (config.beta_schedule == "linear") {
    betas = paddle_linspace(config.beta_start, config.beta_end, n);
  } else if (config.beta_schedule == "scaled_linear") {
    // Paddle squares with its vectorised pow, which can differ from x*x in the last bit:
    // with this schedule the runners agree to about 1 ulp of some betas, not bit for bit.
    betas = paddle_linspace(std::sqrt(config.beta_start), std::sqrt(config.beta_end), n);
    for (float& beta : betas) beta = beta * beta;
  } else {
    throw std::runtime_error("scheduler.beta_schedule: '" + config.beta_schedule +
                             "' is not supported by the C++ runner (linear, scaled_linear)");
  }
  if (config.prediction_type != "epsilon" && config.prediction_type != "v_prediction" &&
      config.prediction_type != "sample") {
    throw std::runtime_error("scheduler.prediction_type: '" + config.prediction_type + "' is not supported");
  }
  if (!config.timestep_spacing.empty() && config.timestep_spacing != "leading" &&
      config.timestep_spacing != "linspace" && config.timestep_spacing != "trailing") {
    throw std::runtime_error("scheduler.timestep_spacing: '" + config.timestep_spacing + "' is not supported");
  }
  // alphas = 1 - betas; alphas_cumprod = cumprod(alphas), sequentially in float32.
  alphas_cumprod_.resize(n);
  float product = 1.0f;
  for (int i = 0; i < n; ++i) {
    product = product * (1.0f - betas[i]);
    alphas_cumprod_[i] = product;
  }
}

namespace {

// The noise schedule alone (ernie_vilg2.models.factory.NOISE_SCHEDULE_KEYS).
SchedulerConfig noise_schedule_of(const SchedulerConfig& config) {
  SchedulerConfig schedule;
  schedule.num_train_timesteps = config.num_train_timesteps;
  schedule.beta_start = config.beta_start;
  schedule.beta_end = config.beta_end;
  schedule.beta_schedule = config.beta_schedule;
  schedule.prediction_type = config.prediction_type;
  return schedule;
}

SchedulerConfig for_class(const SchedulerConfig& config, const std::string& class_name) {
  return config.class_name.empty() || config.class_name == class_name ? config : noise_schedule_of(config);
}

}  // namespace

std::unique_ptr<Scheduler> make_scheduler(const std::string& sampler, const SchedulerConfig& config) {
  if (sampler == "ddim") return std::make_unique<DDIM>(for_class(config, "DDIMScheduler"));
  if (sampler == "dpm") return std::make_unique<DPMSolverPlusPlus>(for_class(config, "DPMSolverMultistepScheduler"));
  throw std::runtime_error("unknown sampler '" + sampler + "' (ddim, dpm)");
}

}  // namespace ernie_vilg2
