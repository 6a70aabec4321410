// scheduler_trace: a test tool (not installed). Runs one sampler of a manifest's `samplers`
// section on given model outputs and prints its timesteps and the sample after every step,
// so that tests/deploy/test_deploy_schedulers.py can compare the runner's samplers with PPDiffusers'
// step by step without a model.
//
//   scheduler_trace CASE.json
//
// CASE.json: {"samplers": <a manifest's samplers section>, "sampler": "ddim" | "dpm",
//             "steps": N, "sample": [floats], "model_outputs": [[floats] for each step]}
// stdout:    {"timesteps": [N ints], "samples": [[floats] after each step]}
// Bad settings: "error: CASE.json: field 'samplers....': ..." on stderr and exit status 2.
#include <iostream>
#include <nlohmann/json.hpp>
#include <vector>

#include "json_fields.h"
#include "json_limits.h"
#include "sampler_settings.h"
#include "scheduler.h"

using namespace ernie_vilg2;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: scheduler_trace CASE.json\n";
    return 2;
  }
  try {
    const std::string file = argv[1];
    const Fields fields(file);
    const nlohmann::json root = read_json_file(file, 1ll << 30, "a trace case");
    const Samplers samplers = read_samplers(fields.at(root, "samplers", "samplers"), fields);
    const std::string name = fields.string(root, "sampler", "sampler");
    if (!samplers.offered.count(name)) fields.fail("sampler", "not offered by the samplers section");
    const int steps = fields.integer(root, "steps", "steps", 1);
    std::unique_ptr<Scheduler> scheduler = make_scheduler(samplers.offered.at(name));
    const std::vector<int> timesteps = scheduler->timesteps(steps);
    const auto outputs = root.at("model_outputs").get<std::vector<std::vector<float>>>();
    auto sample = root.at("sample").get<std::vector<float>>();
    if (outputs.size() != timesteps.size()) fields.fail("model_outputs", "expected one list per timestep");
    nlohmann::json samples = nlohmann::json::array();
    scheduler->begin(steps);
    for (std::size_t i = 0; i < timesteps.size(); ++i) {
      if (outputs[i].size() != sample.size()) fields.fail("model_outputs", "expected lists the size of sample");
      scheduler->step(outputs[i], timesteps[i], &sample);
      samples.push_back(sample);
    }
    std::cout << nlohmann::json{{"timesteps", timesteps}, {"samples", samples}}.dump() << '\n';
    return 0;
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << '\n';
    return 2;
  }
}
