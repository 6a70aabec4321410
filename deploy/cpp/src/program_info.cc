#include "program_info.h"

#include <nlohmann/json.hpp>

#include "errors.h"
#include "json_limits.h"

namespace ernie_vilg2 {
namespace {

using nlohmann::json;

// "1.data" (the pd_op dialect's index in the file) or "pd_op.data": the part after the dot.
std::string op_kind(const json& op) {
  if (!op.is_object() || !op.contains("#") || !op.at("#").is_string()) return "";
  const std::string name = op.at("#").get<std::string>();
  const std::size_t dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

// The shape of a value's type record {"TT": {"D": [{"#": "0.t_f32"}, [dims], ...]}}.
bool tensor_shape(const json& value, Shape* shape) {
  if (!value.is_object() || !value.contains("TT")) return false;
  const json& type = value.at("TT");
  if (!type.is_object() || !type.contains("D") || !type.at("D").is_array() || type.at("D").size() < 2) return false;
  const json& dims = type.at("D").at(1);
  if (!dims.is_array()) return false;
  shape->clear();
  for (const json& dim : dims) {
    if (!dim.is_number_integer()) return false;
    shape->push_back(dim.get<std::int64_t>());
  }
  return true;
}

std::vector<json> outputs(const json& op) {
  if (!op.contains("O")) return {};
  const json& out = op.at("O");
  if (out.is_array()) return std::vector<json>(out.begin(), out.end());
  if (out.is_object()) return {out};
  return {};
}

const json* attribute(const json& op, const std::string& name) {
  if (!op.contains("A") || !op.at("A").is_array()) return nullptr;
  for (const json& entry : op.at("A")) {
    if (entry.is_object() && entry.value("N", json()) == name && entry.contains("AT") && entry.at("AT").is_object() &&
        entry.at("AT").contains("D")) {
      return &entry.at("AT").at("D");
    }
  }
  return nullptr;
}

}  // namespace

ProgramInfo read_program_info(const std::string& path) {
  const json program = read_json_file(path, kMaxProgramBytes, "an exported program");
  const json* ops = nullptr;
  try {
    ops = &program.at("program").at("regions").at(0).at("blocks").at(0).at("ops");
  } catch (const json::exception&) {
    ops = nullptr;
  }
  if (ops == nullptr || !ops->is_array()) throw UserError(path + ": not a PIR program file");
  ProgramInfo info;
  info.path = path;
  std::map<std::int64_t, Shape> parameters;  // value id -> shape
  std::vector<std::int64_t> gathered;
  for (const json& op : *ops) {
    const std::string kind = op_kind(op);
    const std::vector<json> out = outputs(op);
    Shape shape;
    const bool typed = !out.empty() && tensor_shape(out[0], &shape);
    if (kind == "p" && typed && out[0].contains("%") && out[0].at("%").is_number_integer()) {
      parameters[out[0].at("%").get<std::int64_t>()] = shape;
    } else if (kind == "data" && typed) {
      const json* name = attribute(op, "name");
      if (name != nullptr && name->is_string()) info.inputs[name->get<std::string>()] = shape;
    } else if (kind == "fetch" && typed && info.output.empty()) {
      info.output = shape;
    } else if (kind == "gather" && op.contains("I") && op.at("I").is_array() && !op.at("I").empty()) {
      const json& input = op.at("I").at(0);
      if (input.is_object() && input.contains("%") && input.at("%").is_number_integer()) {
        gathered.push_back(input.at("%").get<std::int64_t>());
      }
    }
  }
  for (std::int64_t id : gathered) {
    auto found = parameters.find(id);
    if (found != parameters.end()) info.tables.push_back(found->second);
  }
  if (info.inputs.empty()) throw UserError(path + ": not a PIR program file (no inputs found)");
  return info;
}

}  // namespace ernie_vilg2
