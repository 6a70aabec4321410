// The manifest's `samplers` section: each sampler's settings as the exporter resolved them
// (ernie_vilg2/deploy/sampler_export.py), read and checked field by field with the rules of
// the Python runner (ernie_vilg2/deploy/schedulers.py): every setting present, no other, each
// of the right type, in range and one this runner implements.
#pragma once

#include <map>
#include <string>

#include "json_fields.h"
#include "scheduler.h"

namespace ernie_vilg2 {

struct Samplers {
  std::map<std::string, SamplerSettings> offered;  // by name: ddim, dpm
};

// Reads `section` (the value of the manifest's `samplers`; its `default` is checked to name an
// offered sampler, but the CLI's --sampler has its own default, as the Python runner's); throws
// UserError naming the field ("FILE: field 'samplers.dpm.config.solver_type': ...").
Samplers read_samplers(const nlohmann::json& section, const Fields& fields);

}  // namespace ernie_vilg2
