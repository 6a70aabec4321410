#include "json_limits.h"

#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "errors.h"

namespace ernie_vilg2 {
namespace {

// Python's json module writes the non-standard literals NaN, Infinity and -Infinity for
// non-finite floats; they become null before parsing (and then fail the field's type check).
// Also checks the nesting depth (brackets outside strings).
std::string prepare(const std::string& text, const std::string& path) {
  std::string out;
  out.reserve(text.size());
  bool in_string = false;
  int depth = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size()) {
        out += text[++i];
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') in_string = true;
    if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) {
        throw UserError(path + ": not valid JSON (nested deeper than " + std::to_string(kMaxJsonDepth) + " levels)");
      }
    } else if (c == ']' || c == '}') {
      --depth;
    }
    bool replaced = false;
    for (const char* literal : {"-Infinity", "Infinity", "NaN"}) {
      const std::size_t length = std::char_traits<char>::length(literal);
      if (text.compare(i, length, literal) == 0) {
        out += "null";
        i += length - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += c;
  }
  return out;
}

}  // namespace

nlohmann::json read_json_file(const std::string& path, std::int64_t max_bytes, const std::string& what) {
  struct stat info {};
  if (stat(path.c_str(), &info) != 0 || !S_ISREG(info.st_mode)) throw UserError(path + ": file not found");
  if (info.st_size > max_bytes) {
    throw UserError(path + ": " + std::to_string(info.st_size) + " bytes, more than " + what + " can be (" +
                    std::to_string(max_bytes >> 20) + " MiB)");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError(path + ": cannot be read");
  std::stringstream text;
  text << in.rdbuf();
  try {
    return nlohmann::json::parse(prepare(text.str(), path));
  } catch (const nlohmann::json::parse_error& error) {
    throw UserError(path + ": not valid JSON (byte " + std::to_string(error.byte) + ")");
  }
}

}  // namespace ernie_vilg2
