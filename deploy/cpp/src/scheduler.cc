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

// Paddle's pow of a 0-D float32 tensor is std::pow(float, float); the scheduler raises
// 0-D tensors to 0.5 (sqrtf differs from it in the last bit for some inputs).
float pow_half(float x) { return std::pow(x, 0.5f); }

}  // namespace

DDIMScheduler::DDIMScheduler(const SchedulerConfig& config) : config_(config) {
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
                             "' is not supported by the C++ runner (linear or scaled_linear)");
  }
  if (config.prediction_type != "epsilon" && config.prediction_type != "v_prediction" &&
      config.prediction_type != "sample") {
    throw std::runtime_error("scheduler.prediction_type: '" + config.prediction_type + "' is not supported");
  }
  if (config.timestep_spacing != "leading" && config.timestep_spacing != "linspace" &&
      config.timestep_spacing != "trailing") {
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

std::vector<int> DDIMScheduler::timesteps(int steps) const {
  const int n = config_.num_train_timesteps;
  if (steps < 1 || steps > n) {
    throw std::runtime_error("--steps: must be between 1 and " + std::to_string(n) + " (num_train_timesteps), got " +
                             std::to_string(steps));
  }
  std::vector<int> out;
  if (config_.timestep_spacing == "leading") {
    const int ratio = n / steps;
    for (int i = steps - 1; i >= 0; --i) out.push_back(i * ratio + config_.steps_offset);
  } else if (config_.timestep_spacing == "linspace") {
    // np.linspace(0, n - 1, steps).round()[::-1] (round half to even, last value exact).
    const double step = steps > 1 ? static_cast<double>(n - 1) / (steps - 1) : 0.0;
    for (int i = steps - 1; i >= 0; --i) {
      const double value = (steps > 1 && i == steps - 1) ? n - 1 : i * step;
      out.push_back(static_cast<int>(std::nearbyint(value)));
    }
  } else {  // trailing: np.round(np.arange(n, 0, -n / steps)) - 1
    const double step = -static_cast<double>(n) / steps;
    const int count = static_cast<int>(std::ceil((0.0 - n) / step));
    for (int i = 0; i < count; ++i) out.push_back(static_cast<int>(std::nearbyint(n + i * step)) - 1);
  }
  for (int t : out) {
    if (t < 0 || t >= n) {
      throw std::runtime_error("scheduler.steps_offset: timestep " + std::to_string(t) + " of a " +
                               std::to_string(steps) + "-step run is outside 0.." + std::to_string(n - 1));
    }
  }
  return out;
}

void DDIMScheduler::step(const std::vector<float>& model_output, int t, int steps, std::vector<float>* sample) const {
  const int prev = t - config_.num_train_timesteps / steps;
  const float alpha_t = alphas_cumprod_[t];
  // set_alpha_to_one=False: the last step uses alphas_cumprod[0].
  const float alpha_prev = prev >= 0 ? alphas_cumprod_[prev] : alphas_cumprod_[0];
  const float beta_t = 1.0f - alpha_t;
  const float sqrt_alpha_t = pow_half(alpha_t), sqrt_beta_t = pow_half(beta_t);
  const float sqrt_alpha_prev = pow_half(alpha_prev);
  // eta = 0: std_dev_t = 0, so the direction coefficient is (1 - alpha_prev - 0) ** 0.5.
  const float direction_coef = pow_half(1.0f - alpha_prev - 0.0f);
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

}  // namespace ernie_vilg2
