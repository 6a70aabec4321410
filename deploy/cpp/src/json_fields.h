// Typed access to the fields of an export's JSON (the manifest); every error is a UserError
// naming the file and the field by its dotted path ("FILE: field 'latent.height': ...").
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "errors.h"

namespace ernie_vilg2 {

class Fields {
 public:
  static constexpr std::int64_t kMaxInteger = 1000000000;

  explicit Fields(std::string file) : file_(std::move(file)) {}

  const std::string& file() const { return file_; }
  [[noreturn]] void fail(const std::string& field, const std::string& reason) const {
    throw UserError(file_ + ": field '" + field + "': " + reason);
  }
  const nlohmann::json& at(const nlohmann::json& parent, const std::string& key, const std::string& field) const {
    if (!parent.is_object() || !parent.contains(key)) fail(field, "missing");
    return parent.at(key);
  }
  const nlohmann::json& object(const nlohmann::json& parent, const std::string& key, const std::string& field) const {
    const nlohmann::json& value = at(parent, key, field);
    if (!value.is_object()) fail(field, "expected an object");
    return value;
  }
  int integer(const nlohmann::json& parent, const std::string& key, const std::string& field, int minimum,
              std::int64_t maximum = kMaxInteger) const {
    const nlohmann::json& value = at(parent, key, field);
    if (!value.is_number_integer()) fail(field, "expected an integer");
    const auto number = value.get<std::int64_t>();
    if (number < minimum || number > maximum) {
      fail(field, "must be between " + std::to_string(minimum) + " and " + std::to_string(maximum) + ", got " +
                      value.dump());
    }
    return static_cast<int>(number);
  }
  double number(const nlohmann::json& parent, const std::string& key, const std::string& field) const {
    const nlohmann::json& value = at(parent, key, field);
    if (!value.is_number()) fail(field, "expected a number");
    return value.get<double>();
  }
  std::string string(const nlohmann::json& parent, const std::string& key, const std::string& field) const {
    const nlohmann::json& value = at(parent, key, field);
    if (!value.is_string()) fail(field, "expected a string");
    return value.get<std::string>();
  }
  bool boolean(const nlohmann::json& parent, const std::string& key, const std::string& field) const {
    const nlohmann::json& value = at(parent, key, field);
    if (!value.is_boolean()) fail(field, "expected true or false");
    return value.get<bool>();
  }

 private:
  std::string file_;
};

}  // namespace ernie_vilg2
