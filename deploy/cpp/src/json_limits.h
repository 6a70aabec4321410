// Reading the JSON files of an export folder within limits: a size cap before the file is
// read and a nesting cap before it is parsed (nlohmann's json frees nested values
// recursively, so a deeply nested file would overflow the stack). The Python runner has the
// same rules (ernie_vilg2/deploy/json_limits.py).
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace ernie_vilg2 {

constexpr int kMaxJsonDepth = 64;

// Reads and parses `path` (at most `max_bytes`, nesting at most kMaxJsonDepth; Python's
// NaN/Infinity literals become null); throws UserError naming `path`.
nlohmann::json read_json_file(const std::string& path, std::int64_t max_bytes, const std::string& what);

}  // namespace ernie_vilg2
