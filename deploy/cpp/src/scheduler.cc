#include "scheduler.h"

#include <algorithm>
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

void check_range(const std::vector<int>& timesteps, const SamplerSettings& settings, int steps) {
  const int n = settings.num_train_timesteps;
  for (int t : timesteps) {
    if (t < 0 || t >= n) {
      throw std::runtime_error("field 'samplers." + settings.name + ".config': with timestep_spacing '" +
                               settings.timestep_spacing + "' and steps_offset " +
                               std::to_string(settings.steps_offset) + ", a " + std::to_string(steps) +
                               "-step run has timestep " + std::to_string(t) + ", outside 0.." +
                               std::to_string(n - 1));
    }
  }
}

// PPDiffusers' betas_for_alpha_bar (squaredcos_cap_v2), in Python's double arithmetic.
std::vector<float> cosine_betas(int n) {
  constexpr double kPi = 3.141592653589793;  // Python's math.pi
  auto alpha_bar = [](double t) { return std::pow(std::cos((t + 0.008) / 1.008 * kPi / 2), 2.0); };
  std::vector<float> betas(n);
  for (int i = 0; i < n; ++i) {
    const double t1 = static_cast<double>(i) / n, t2 = static_cast<double>(i + 1) / n;
    betas[i] = static_cast<float>(std::min(1 - alpha_bar(t2) / alpha_bar(t1), 0.999));
  }
  return betas;
}

class DDIM : public Scheduler {
 public:
  explicit DDIM(const SamplerSettings& settings)
      : Scheduler(settings), final_alpha_cumprod_(settings.set_alpha_to_one ? 1.0f : alphas_cumprod_[0]) {}

  std::vector<int> timesteps(int steps) const override {
    const int n = settings_.num_train_timesteps;
    std::vector<int> out;
    if (settings_.timestep_spacing == "leading") {
      for (int i = steps - 1; i >= 0; --i) out.push_back(i * (n / steps) + settings_.steps_offset);
    } else if (settings_.timestep_spacing == "linspace") {
      const std::vector<int> values = rounded_linspace(n - 1, steps);
      out.assign(values.rbegin(), values.rend());
    } else {
      out = trailing(n, steps);
    }
    check_range(out, settings_, steps);
    return out;
  }

  void begin(int steps) override { steps_ = steps; }

  void step(const std::vector<float>& model_output, int t, std::vector<float>* sample) override {
    const int prev = t - settings_.num_train_timesteps / steps_;
    const float alpha_t = alphas_cumprod_[t];
    const float alpha_prev = prev >= 0 ? alphas_cumprod_[prev] : final_alpha_cumprod_;
    const float beta_t = 1.0f - alpha_t;
    const float sqrt_alpha_t = pow_f(alpha_t, 0.5f), sqrt_beta_t = pow_f(beta_t, 0.5f);
    const float sqrt_alpha_prev = pow_f(alpha_prev, 0.5f);
    // eta = 0: std_dev_t = 0, so the direction coefficient is (1 - alpha_prev - 0) ** 0.5.
    const float direction_coef = pow_f(1.0f - alpha_prev - 0.0f, 0.5f);
    const bool predicts_epsilon = settings_.prediction_type == "epsilon";
    const bool predicts_sample = settings_.prediction_type == "sample";
    const bool clip = settings_.clip_sample;
    const float range = static_cast<float>(settings_.clip_sample_range);
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
      if (clip) original = original < -range ? -range : (original > range ? range : original);
      x[i] = sqrt_alpha_prev * original + direction_coef * epsilon;
    }
  }

 private:
  float final_alpha_cumprod_;  // alpha at the step after the last timestep
  int steps_ = 1;
};

class DPMSolverPlusPlus : public Scheduler {
 public:
  explicit DPMSolverPlusPlus(const SamplerSettings& settings) : Scheduler(settings) {}

  // As DPMSolverMultistepScheduler.set_timesteps (lambda_min_clipped = -inf): steps + 1
  // points, the last one dropped.
  std::vector<int> timesteps(int steps) const override {
    const int n = settings_.num_train_timesteps;
    std::vector<int> out;
    if (settings_.timestep_spacing == "linspace") {
      const std::vector<int> values = rounded_linspace(n - 1, steps + 1);
      for (int i = steps; i >= 1; --i) out.push_back(values[i]);
    } else if (settings_.timestep_spacing == "leading") {
      const int ratio = n / (steps + 1);
      for (int i = steps; i >= 1; --i) out.push_back(i * ratio + settings_.steps_offset);
    } else {
      out = trailing(n, steps);
    }
    check_range(out, settings_, steps);
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
        k == n - 1 && (settings_.euler_at_final || (settings_.lower_order_final && n < 15));
    std::vector<float> x0 = model_to_x0(model_output, *sample, sigmas_[k]);
    if (settings_.solver_order == 1 || lower_order_nums_ < 1 || final_step) {
      first_order(x0, k, sample);
    } else {
      second_order(x0, k, sample);
    }
    previous_ = std::move(x0);
    if (lower_order_nums_ < settings_.solver_order) ++lower_order_nums_;
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
    if (settings_.prediction_type == "sample") return output;
    const AlphaSigma s = alpha_sigma(sigma);
    std::vector<float> x0(output.size());
    for (std::size_t i = 0; i < x0.size(); ++i) {
      x0[i] = settings_.prediction_type == "epsilon" ? (sample[i] - s.sigma * output[i]) / s.alpha
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
    const bool midpoint = settings_.solver_type == "midpoint";
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

Scheduler::Scheduler(const SamplerSettings& settings) : settings_(settings) {
  const int n = settings.num_train_timesteps;
  const std::string field = "field 'samplers." + settings.name + ".config.";
  if (n < 1) throw std::runtime_error(field + "num_train_timesteps': must be >= 1");
  std::vector<float> betas;
  if (!settings.trained_betas.empty()) {
    if (static_cast<int>(settings.trained_betas.size()) != n) {
      throw std::runtime_error(field + "trained_betas': expected num_train_timesteps numbers");
    }
    for (double beta : settings.trained_betas) betas.push_back(static_cast<float>(beta));
  } else if (settings.beta_schedule == "linear") {
    betas = paddle_linspace(settings.beta_start, settings.beta_end, n);
  } else if (settings.beta_schedule == "scaled_linear") {
    // The square roots are Python's beta ** 0.5. Paddle squares with its vectorised pow, which
    // can differ from x*x in the last bit: about 1 ulp of some betas, not bit for bit.
    betas = paddle_linspace(std::pow(settings.beta_start, 0.5), std::pow(settings.beta_end, 0.5), n);
    for (float& beta : betas) beta = beta * beta;
  } else if (settings.beta_schedule == "squaredcos_cap_v2") {
    betas = cosine_betas(n);
  } else {
    throw std::runtime_error(field + "beta_schedule': '" + settings.beta_schedule + "' is not implemented");
  }
  // alphas = 1 - betas; alphas_cumprod = cumprod(alphas), sequentially in float32.
  alphas_cumprod_.resize(n);
  float product = 1.0f;
  for (int i = 0; i < n; ++i) {
    product = product * (1.0f - betas[i]);
    alphas_cumprod_[i] = product;
  }
}

std::unique_ptr<Scheduler> make_scheduler(const SamplerSettings& settings) {
  if (settings.name == "ddim") return std::make_unique<DDIM>(settings);
  if (settings.name == "dpm") return std::make_unique<DPMSolverPlusPlus>(settings);
  throw std::runtime_error("unknown sampler '" + settings.name + "' (ddim, dpm)");
}

}  // namespace ernie_vilg2
