#include "mkl_dispatch.h"

#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

namespace ernie_vilg2 {

namespace {

std::string trim(const std::string& text) {
  const std::size_t first = text.find_first_not_of(" \t");
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(" \t") - first + 1);
}

// Whether /proc/cpuinfo text describes an AMD (or Hygon) CPU with AVX2 and FMA.
bool amd_with_avx2(const std::string& cpuinfo) {
  std::string vendor, flags;
  std::istringstream lines(cpuinfo);
  std::string line;
  while (std::getline(lines, line) && (vendor.empty() || flags.empty())) {
    const std::size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string key = trim(line.substr(0, colon));
    if (key == "vendor_id" && vendor.empty()) vendor = trim(line.substr(colon + 1));
    if (key == "flags" && flags.empty()) flags = line.substr(colon + 1);
  }
  std::set<std::string> names;
  std::istringstream words(flags);
  for (std::string word; words >> word;) names.insert(word);
  return (vendor == "AuthenticAMD" || vendor == "HygonGenuine") && names.count("avx2") && names.count("fma");
}

}  // namespace

bool prefer_mkl_avx2() {
  const char* opt_out = std::getenv("ERNIE_VILG2_MKL_AVX2");
  if (std::getenv("MKL_DEBUG_CPU_TYPE") != nullptr || (opt_out != nullptr && std::string(opt_out) == "0")) {
    return false;
  }
  std::ifstream file("/proc/cpuinfo");
  if (!file) return false;
  std::ostringstream cpuinfo;
  cpuinfo << file.rdbuf();
  return amd_with_avx2(cpuinfo.str()) && setenv("MKL_DEBUG_CPU_TYPE", "5", 0) == 0;
}

std::string mkl_dispatch_description(bool set_here) {
  const char* value = std::getenv("MKL_DEBUG_CPU_TYPE");
  if (value == nullptr) return "MKL picks its code path";
  return std::string("MKL_DEBUG_CPU_TYPE=") + value +
         (set_here ? " (set by the runner: AMD CPU with AVX2 and FMA)" : " (from the environment)");
}

}  // namespace ernie_vilg2
