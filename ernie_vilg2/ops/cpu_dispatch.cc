// The code path and cache sizes of the CPU operators (cpu_dispatch.h), and a C interface to
// them that Python reads through ctypes (ernie_vilg2.ops.cpu_ops_config) and the tests call
// with a CPU or a sysfs of their own.
#include "cpu_dispatch.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

namespace ernie_vilg2 {
namespace {

constexpr const char* kIsaVariable = "ERNIE_VILG2_CPU_ISA";
constexpr const char* kIsaNames[] = {"generic", "avx2", "avx512"};
constexpr const char* kIsaNeeds[] = {"", "AVX2 and FMA", "AVX-512 (F, BW, VL and DQ)"};
constexpr int kIsaCount = 3;
constexpr const char* kSysfsCaches = "/sys/devices/system/cpu/cpu0/cache";
// Where neither sysconf nor sysfs says: the caches the blocks were first tuned on (AMD EPYC).
constexpr int64_t kDefaultL1d = 32 << 10, kDefaultL2 = 512 << 10;

int cpu_paths() {
  int paths = 1 << kGeneric;
#if defined(ERNIE_VILG2_X86_PATHS)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    paths |= 1 << kAvx2;
    // libgcc's and compiler-rt's checks include the OS saving the AVX-512 registers (XCR0).
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      paths |= 1 << kAvx512;
  }
#endif
  return paths;
}

int build_paths() {
  int paths = 1 << kGeneric;
#if defined(ERNIE_VILG2_X86_PATHS)
  paths |= 1 << kAvx2;
#endif
#if defined(ERNIE_VILG2_AVX512_PATH)
  paths |= 1 << kAvx512;
#endif
  return paths;
}

std::string path_list(int paths) {
  std::string out;
  for (int isa = kIsaCount - 1; isa >= 0; --isa)
    if (paths & (1 << isa)) out += (out.empty() ? "" : ", ") + std::string(kIsaNames[isa]);
  return out;
}

// The path for `request` (null, "" or "auto": the widest usable one); -1 and a message if refused.
int choose(const char* request, int cpu, int build, std::string* error) {
  const int usable = cpu & build;
  if (request == nullptr || *request == '\0' || std::strcmp(request, "auto") == 0) {
    int isa = kGeneric;
    while (isa + 1 < kIsaCount && (usable & (1 << (isa + 1)))) ++isa;
    return isa;
  }
  const std::string head = std::string(kIsaVariable) + "=" + request + ": ";
  int want = -1;
  for (int isa = 0; isa < kIsaCount; ++isa)
    if (std::strcmp(request, kIsaNames[isa]) == 0) want = isa;
  if (want < 0) {
    *error = head + "not one of auto, generic, avx2, avx512";
    return -1;
  }
  if (usable & (1 << want)) return want;
  *error = head + (build & (1 << want) ? "this CPU lacks " + std::string(kIsaNeeds[want])
                                       : "the operators were built without that path (the compiler cannot emit it)") +
           "; the paths here: " + path_list(usable);
  return -1;
}

std::string first_line(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  std::getline(f, line);
  return line;
}

// sysfs sizes: "48K", "2048K", "1M", or bytes.
int64_t parse_size(const std::string& text) {
  char* end = nullptr;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (end == text.c_str() || value <= 0) return 0;
  switch (*end) {
    case 'K': return value << 10;
    case 'M': return value << 20;
    case '\0': return value;
    default: return 0;
  }
}

CacheSizes read_cache_sizes(const char* sysfs_dir, bool use_sysconf) {
  CacheSizes c{0, 0, kDefault, kDefault};
#if defined(_SC_LEVEL1_DCACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE)
  if (use_sysconf) {  // glibc: from CPUID on x86, so also where /sys is not mounted
    if (const long l1d = sysconf(_SC_LEVEL1_DCACHE_SIZE); l1d > 0) {
      c.l1d = l1d;
      c.l1d_source = kSysconf;
    }
    if (const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE); l2 > 0) {
      c.l2 = l2;
      c.l2_source = kSysconf;
    }
  }
#endif
  for (int index = 0; sysfs_dir != nullptr && index < 32 && (c.l1d == 0 || c.l2 == 0); ++index) {
    const std::string dir = std::string(sysfs_dir) + "/index" + std::to_string(index) + "/";
    const std::string level = first_line(dir + "level"), type = first_line(dir + "type");
    const int64_t size = parse_size(first_line(dir + "size"));
    if (size == 0 || type == "Instruction") continue;
    if (level == "1" && c.l1d == 0) {
      c.l1d = size;
      c.l1d_source = kSysfs;
    }
    if (level == "2" && c.l2 == 0) {
      c.l2 = size;
      c.l2_source = kSysfs;
    }
  }
  if (c.l1d == 0) c.l1d = kDefaultL1d;
  if (c.l2 == 0) c.l2 = kDefaultL2;
  return c;
}

}  // namespace

const IsaChoice& cpu_isa() {
  static std::string error;  // empty unless refused
  static const IsaChoice choice{choose(std::getenv(kIsaVariable), cpu_paths(), build_paths(), &error), error.c_str()};
  return choice;
}

const CacheSizes& cpu_caches() {
  static const CacheSizes caches = read_cache_sizes(kSysfsCaches, true);
  return caches;
}

}  // namespace ernie_vilg2

#define ERNIE_VILG2_API extern "C" __attribute__((visibility("default")))

// This process's path (an Isa; -1 when refused, ernie_vilg2_cpu_isa_error saying why).
ERNIE_VILG2_API int ernie_vilg2_cpu_isa() { return ernie_vilg2::cpu_isa().isa; }
ERNIE_VILG2_API const char* ernie_vilg2_cpu_isa_error() { return ernie_vilg2::cpu_isa().error; }
// Bit i set: path i (an Isa) usable here (this CPU has it and the library was built with it).
ERNIE_VILG2_API int ernie_vilg2_cpu_isa_paths() { return ernie_vilg2::cpu_paths() & ernie_vilg2::build_paths(); }

// The choice for a request on a CPU and build given as path bit sets, for the tests.
ERNIE_VILG2_API int ernie_vilg2_choose_cpu_isa(const char* request, int cpu_paths, int build_paths, char* error,
                                               int error_size) {
  std::string message;
  const int isa = ernie_vilg2::choose(request, cpu_paths, build_paths, &message);
  if (error_size > 0) std::snprintf(error, error_size, "%s", message.c_str());
  return isa;
}

// out: L1d bytes, L2 bytes, their sources (CacheSource). This process's, or read now from a
// sysfs cache folder of the tests' (null: none) with or without sysconf.
ERNIE_VILG2_API void ernie_vilg2_cpu_caches(int64_t* out) {
  const auto& c = ernie_vilg2::cpu_caches();
  out[0] = c.l1d, out[1] = c.l2, out[2] = c.l1d_source, out[3] = c.l2_source;
}
ERNIE_VILG2_API void ernie_vilg2_read_cache_sizes(const char* sysfs_dir, int use_sysconf, int64_t* out) {
  const auto c = ernie_vilg2::read_cache_sizes(sysfs_dir, use_sysconf != 0);
  out[0] = c.l1d, out[1] = c.l2, out[2] = c.l1d_source, out[3] = c.l2_source;
}
