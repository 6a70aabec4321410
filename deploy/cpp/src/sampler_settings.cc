#include "sampler_settings.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace ernie_vilg2 {
namespace {

using nlohmann::json;

// Bounds the tables of T numbers a manifest can ask for (as MAX_TRAIN_TIMESTEPS in Python).
constexpr int kMaxTrainTimesteps = 100000;

const std::vector<std::string> kEntryKeys = {"class", "max_steps", "config"};
const std::map<std::string, std::string> kClassNames = {{"ddim", "DDIMScheduler"},
                                                        {"dpm", "DPMSolverMultistepScheduler"}};
const std::vector<std::string> kNoiseSchedule = {"num_train_timesteps", "beta_schedule", "beta_start",
                                                 "beta_end", "trained_betas", "prediction_type",
                                                 "timestep_spacing", "steps_offset"};
const std::map<std::string, std::vector<std::string>> kOwnSettings = {
    {"ddim", {"clip_sample", "clip_sample_range", "set_alpha_to_one"}},
    {"dpm", {"algorithm_type", "solver_order", "solver_type", "lower_order_final", "euler_at_final"}}};

std::string joined(const std::vector<std::string>& words) {
  std::string text;
  for (const std::string& word : words) text += (text.empty() ? "" : ", ") + word;
  return text;
}

// `object` has exactly the keys `allowed`.
void check_keys(const json& object, const std::vector<std::string>& allowed, const std::string& prefix,
                const Fields& fields) {
  if (!object.is_object()) fields.fail(prefix, "expected an object");
  for (const auto& item : object.items()) {
    if (std::find(allowed.begin(), allowed.end(), item.key()) == allowed.end()) {
      fields.fail(prefix + "." + item.key(), "is not a setting the deploy runners read (" + joined(allowed) + ")");
    }
  }
  for (const std::string& key : allowed) {
    if (!object.contains(key)) fields.fail(prefix + "." + key, "missing");
  }
}

std::string choice(const json& config, const std::string& key, const std::string& prefix,
                   const std::vector<std::string>& allowed, const Fields& fields) {
  const std::string value = fields.string(config, key, prefix + "." + key);
  if (std::find(allowed.begin(), allowed.end(), value) == allowed.end()) {
    fields.fail(prefix + "." + key, "'" + value + "' is not implemented by the deploy runners (they implement " +
                                        joined(allowed) + ")");
  }
  return value;
}

double bounded(double value, double high, const std::string& field, const Fields& fields) {
  if (!(std::isfinite(value) && value >= 0 && value <= high)) {
    fields.fail(field, "must be a finite number in [0, " + (std::isinf(high) ? std::string("inf") : "1") + "]");
  }
  return value;
}

SamplerSettings read_sampler(const json& entry, const std::string& name, const Fields& fields) {
  const std::string prefix = "samplers." + name;
  check_keys(entry, kEntryKeys, prefix, fields);
  const std::string class_name = fields.string(entry, "class", prefix + ".class");
  if (class_name != kClassNames.at(name)) fields.fail(prefix + ".class", "expected '" + kClassNames.at(name) + "'");
  const json& config = fields.object(entry, "config", prefix + ".config");
  const std::string c = prefix + ".config";
  std::vector<std::string> keys = kNoiseSchedule;
  keys.insert(keys.end(), kOwnSettings.at(name).begin(), kOwnSettings.at(name).end());
  check_keys(config, keys, c, fields);

  SamplerSettings s;
  s.name = name;
  s.num_train_timesteps = fields.integer(config, "num_train_timesteps", c + ".num_train_timesteps", 1,
                                         kMaxTrainTimesteps);
  s.beta_schedule = choice(config, "beta_schedule", c, {"linear", "scaled_linear", "squaredcos_cap_v2"}, fields);
  s.beta_start = bounded(fields.number(config, "beta_start", c + ".beta_start"), 1, c + ".beta_start", fields);
  s.beta_end = bounded(fields.number(config, "beta_end", c + ".beta_end"), 1, c + ".beta_end", fields);
  const json& trained = config.at("trained_betas");
  if (!trained.is_null()) {
    const std::string field = c + ".trained_betas";
    if (!trained.is_array() || static_cast<int>(trained.size()) != s.num_train_timesteps) {
      fields.fail(field, "expected null or a list of num_train_timesteps (" + std::to_string(s.num_train_timesteps) +
                             ") numbers");
    }
    for (const json& beta : trained) {
      if (!beta.is_number()) fields.fail(field, "expected a list of numbers");
      s.trained_betas.push_back(bounded(beta.get<double>(), 1, field, fields));
    }
  }
  s.prediction_type = choice(config, "prediction_type", c, {"epsilon", "v_prediction", "sample"}, fields);
  s.timestep_spacing = choice(config, "timestep_spacing", c, {"leading", "linspace", "trailing"}, fields);
  s.steps_offset = fields.integer(config, "steps_offset", c + ".steps_offset", 0, s.num_train_timesteps - 1);
  if (name == "ddim") {
    s.clip_sample = fields.boolean(config, "clip_sample", c + ".clip_sample");
    s.clip_sample_range = bounded(fields.number(config, "clip_sample_range", c + ".clip_sample_range"), INFINITY,
                                  c + ".clip_sample_range", fields);
    s.set_alpha_to_one = fields.boolean(config, "set_alpha_to_one", c + ".set_alpha_to_one");
  } else {
    choice(config, "algorithm_type", c, {"dpmsolver++"}, fields);
    s.solver_order = fields.integer(config, "solver_order", c + ".solver_order", 1, 2);
    s.solver_type = choice(config, "solver_type", c, {"midpoint", "heun"}, fields);
    s.lower_order_final = fields.boolean(config, "lower_order_final", c + ".lower_order_final");
    s.euler_at_final = fields.boolean(config, "euler_at_final", c + ".euler_at_final");
  }
  s.max_steps = fields.integer(entry, "max_steps", prefix + ".max_steps", 1, s.num_train_timesteps);
  return s;
}

}  // namespace

Samplers read_samplers(const json& section, const Fields& fields) {
  if (!section.is_object()) fields.fail("samplers", "expected an object");
  Samplers samplers;
  for (const auto& item : section.items()) {
    if (item.key() == "default") continue;
    if (!kClassNames.count(item.key())) {
      fields.fail("samplers." + item.key(), "is not a sampler the deploy runners offer (ddim, dpm)");
    }
    samplers.offered[item.key()] = read_sampler(item.value(), item.key(), fields);
  }
  if (samplers.offered.empty()) fields.fail("samplers", "offers no sampler");
  const std::string default_name = fields.string(section, "default", "samplers.default");
  if (!samplers.offered.count(default_name)) {
    std::vector<std::string> names;
    for (const auto& offered : samplers.offered) names.push_back(offered.first);
    fields.fail("samplers.default",
                "must name an offered sampler (" + joined(names) + "), got '" + default_name + "'");
  }
  return samplers;
}

}  // namespace ernie_vilg2
