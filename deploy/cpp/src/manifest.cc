#include "manifest.h"

#include <openssl/evp.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "json_fields.h"
#include "json_limits.h"
#include "program_info.h"
#include "unicode_text.h"

namespace ernie_vilg2 {
namespace {

using nlohmann::json;

constexpr const char* kFormat = "ernie-vilg2-inference";
// 2: the resolved sampler settings (`samplers`); version 1 is refused (re-export).
constexpr int kFormatVersion = 2;
// A manifest is a few KB (a sampler's trained_betas list of T numbers is the largest part).
constexpr std::int64_t kMaxManifestBytes = 4ll << 20;
// The vocab is read whole: a real one is a few hundred KB.
constexpr std::int64_t kMaxVocabBytes = 64ll << 20;

bool is_directory(const std::string& path) {
  struct stat info {};
  return stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

// A relative path inside the export folder.
std::string relative_path(const json& parent, const std::string& key, const std::string& field, const Fields& fields) {
  std::string path = fields.string(parent, key, field);
  if (path.empty() || path[0] == '/' || path.find("..") != std::string::npos) {
    fields.fail(field, "expected a path inside the export folder, got '" + path + "'");
  }
  return path;
}

// A program entry; with `cpu_ops` (the manifest has that entry, as in the Python reader) also
// its optional program with the C++ CPU operators.
ProgramFiles program(const json& value, const std::string& field, const Fields& fields, bool cpu_ops) {
  if (!value.is_object()) fields.fail(field, "expected an object");
  ProgramFiles files{relative_path(value, "model", field + ".model", fields),
                     relative_path(value, "params", field + ".params", fields), "", ""};
  if (!cpu_ops) return files;
  if (value.contains("params_with_cpu_ops")) {
    files.params_with_cpu_ops = relative_path(value, "params_with_cpu_ops", field + ".params_with_cpu_ops", fields);
  }
  if (value.contains("model_with_cpu_ops")) {
    files.model_with_cpu_ops = relative_path(value, "model_with_cpu_ops", field + ".model_with_cpu_ops", fields);
    if (files.params_with_cpu_ops.empty()) files.params_with_cpu_ops = files.params;
  }
  return files;
}

// The optional `cpu_ops` entry (absent or null: none).
CpuOpsLibrary read_cpu_ops(const json& root, const Fields& fields) {
  CpuOpsLibrary entry;
  if (!root.contains("cpu_ops") || root.at("cpu_ops").is_null()) return entry;
  const json& section = fields.object(root, "cpu_ops", "cpu_ops");
  entry.library = relative_path(section, "library", "cpu_ops.library", fields);
  entry.paddle_version = fields.string(section, "paddle_version", "cpu_ops.paddle_version");
  entry.paddle_commit = fields.string(section, "paddle_commit", "cpu_ops.paddle_commit");
  fields.string(section, "source_sha256", "cpu_ops.source_sha256");  // checked as the Python reader does
  return entry;
}

// The files of `cpu_ops`: its library and the programs with the operators.
std::vector<std::string> cpu_ops_files(const Manifest& manifest) {
  if (manifest.cpu_ops.library.empty()) return {};
  std::vector<std::string> names = {manifest.cpu_ops.library};
  std::vector<const ProgramFiles*> programs = {&manifest.text_encoder, &manifest.vae_decoder};
  for (const ProgramFiles& expert : manifest.experts) programs.push_back(&expert);
  for (const ProgramFiles* program : programs) {
    for (const std::string* name : {&program->model_with_cpu_ops, &program->params_with_cpu_ops}) {
      if (!name->empty()) names.push_back(*name);
    }
  }
  return names;
}

TokenizerConfig read_tokenizer(const json& section, const Fields& fields) {
  TokenizerConfig config;
  config.max_length = fields.integer(section, "max_length", "tokenizer.max_length", 2);
  config.do_lower_case = fields.boolean(section, "do_lower_case", "tokenizer.do_lower_case");
  config.unk_token = fields.string(section, "unk_token", "tokenizer.unk_token");
  config.cls_token = fields.string(section, "cls_token", "tokenizer.cls_token");
  config.sep_token = fields.string(section, "sep_token", "tokenizer.sep_token");
  config.pad_token = fields.string(section, "pad_token", "tokenizer.pad_token");
  const json& never_split = fields.at(section, "never_split", "tokenizer.never_split");
  if (!never_split.is_array()) fields.fail("tokenizer.never_split", "expected a list of strings");
  for (const json& token : never_split) {
    if (!token.is_string() || token.get<std::string>().empty()) {
      fields.fail("tokenizer.never_split", "expected a list of non-empty strings");
    }
    config.never_split.push_back(token.get<std::string>());
  }
  const json& normalization = fields.object(section, "normalization", "tokenizer.normalization");
  for (const auto& [key, value] : normalization.items()) {
    std::u32string from, to;
    std::size_t bad = 0;
    if (!value.is_string() || !decode_utf8(key, &from, &bad) || !decode_utf8(value.get<std::string>(), &to, &bad) ||
        from.size() != 1 || to.size() != 1) {
      fields.fail("tokenizer.normalization", "expected a map of one character to one character");
    }
    config.normalization[from[0]] = to[0];
  }
  return config;
}

std::string sha256_hex(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EVP_MD_CTX* context = EVP_MD_CTX_new();
  EVP_DigestInit_ex(context, EVP_sha256(), nullptr);
  std::vector<char> block(1 << 20);
  while (in) {
    in.read(block.data(), static_cast<std::streamsize>(block.size()));
    EVP_DigestUpdate(context, block.data(), static_cast<std::size_t>(in.gcount()));
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(context, digest, &length);
  EVP_MD_CTX_free(context);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) {
    hex += kHex[digest[i] >> 4];
    hex += kHex[digest[i] & 15];
  }
  return hex;
}

// router.boundaries: N - 1 strictly increasing timesteps in [1, T - 1]; without them (an
// export from before they were written) the uniform split, which needs N to divide T.
void read_boundaries(const json& router, const Fields& fields, Manifest* manifest) {
  const int n = manifest->num_experts, T = manifest->num_train_timesteps;
  if (!router.contains("boundaries")) {
    if (T % n != 0) fields.fail("router.num_experts", "must divide router.num_train_timesteps (" + std::to_string(T) + ")");
    for (int i = 1; i < n; ++i) manifest->boundaries.push_back(i * (T / n));
    return;
  }
  const json& list = router.at("boundaries");
  if (!list.is_array() || static_cast<int>(list.size()) != n - 1) {
    fields.fail("router.boundaries", "expected a list of " + std::to_string(n - 1) + " timesteps (one fewer than the " +
                                         std::to_string(n) + " experts)");
  }
  for (const json& value : list) {
    const int previous = manifest->boundaries.empty() ? 0 : manifest->boundaries.back();
    if (!value.is_number_integer() || value.get<std::int64_t>() <= previous || value.get<std::int64_t>() >= T) {
      fields.fail("router.boundaries", "expected strictly increasing integer timesteps in [1, " + std::to_string(T - 1) +
                                           "], got " + list.dump());
    }
    manifest->boundaries.push_back(value.get<int>());
  }
}

}  // namespace

int Manifest::expert_for_timestep(int t) const {
  const int clamped = std::min(std::max(t, 0), num_train_timesteps - 1);
  return static_cast<int>(std::upper_bound(boundaries.begin(), boundaries.end(), clamped) - boundaries.begin());
}

Manifest load_manifest(const std::string& folder) {
  if (!is_directory(folder)) throw UserError("--model: export folder not found: " + folder);
  const std::string file = folder + "/manifest.json";
  struct stat info {};
  if (stat(file.c_str(), &info) != 0) {
    throw UserError(file + ": not found (is " + folder + " an export folder? tools/export_model.py writes one)");
  }
  const json root = read_json_file(file, kMaxManifestBytes, "a manifest");
  const Fields fields(file);
  if (!root.is_object()) throw UserError(file + ": expected a JSON object");
  if (fields.string(root, "format", "format") != kFormat) {
    fields.fail("format", std::string("expected '") + kFormat + "' (not an ERNIE-ViLG 2.0 export)");
  }
  const int version = fields.integer(root, "format_version", "format_version", 0);
  if (version != kFormatVersion) {
    fields.fail("format_version", std::to_string(version) + " is not supported by this runner (it reads version " +
                                      std::to_string(kFormatVersion) + "; re-export with tools/export_model.py)");
  }

  Manifest manifest;
  manifest.folder = folder;
  const json& latent = fields.object(root, "latent", "latent");
  manifest.latent_channels = fields.integer(latent, "channels", "latent.channels", 1);
  manifest.latent_height = fields.integer(latent, "height", "latent.height", 1);
  manifest.latent_width = fields.integer(latent, "width", "latent.width", 1);
  manifest.scaling_factor = fields.number(latent, "scaling_factor", "latent.scaling_factor");
  if (!(std::isfinite(manifest.scaling_factor) && manifest.scaling_factor > 0)) {
    fields.fail("latent.scaling_factor", "must be a finite number > 0");
  }
  const json& image = fields.object(root, "image", "image");
  manifest.image_height = fields.integer(image, "height", "image.height", 1);
  manifest.image_width = fields.integer(image, "width", "image.width", 1);
  const json& router = fields.object(root, "router", "router");
  manifest.num_experts = fields.integer(router, "num_experts", "router.num_experts", 1);
  manifest.num_train_timesteps = fields.integer(router, "num_train_timesteps", "router.num_train_timesteps", 1);

  manifest.samplers = read_samplers(fields.at(root, "samplers", "samplers"), fields);
  for (const auto& [name, settings] : manifest.samplers.offered) {
    if (settings.num_train_timesteps != manifest.num_train_timesteps) {
      fields.fail("samplers." + name + ".config.num_train_timesteps", "differs from router.num_train_timesteps");
    }
  }
  const json& tokenizer = fields.object(root, "tokenizer", "tokenizer");
  manifest.vocab = relative_path(tokenizer, "vocab", "tokenizer.vocab", fields);
  manifest.tokenizer = read_tokenizer(tokenizer, fields);
  manifest.tokenizer.vocab_file = manifest.path(manifest.vocab);

  manifest.cpu_ops = read_cpu_ops(root, fields);
  const bool cpu_ops = !manifest.cpu_ops.library.empty();
  const json& programs = fields.object(root, "programs", "programs");
  manifest.text_encoder = program(fields.at(programs, "text_encoder", "programs.text_encoder"),
                                  "programs.text_encoder", fields, cpu_ops);
  if (programs.at("text_encoder").contains("hidden_size")) {
    manifest.hidden_size = fields.integer(programs.at("text_encoder"), "hidden_size", "programs.text_encoder.hidden_size", 1);
  }
  manifest.vae_decoder = program(fields.at(programs, "vae_decoder", "programs.vae_decoder"),
                                 "programs.vae_decoder", fields, cpu_ops);
  const json& experts = fields.at(programs, "experts", "programs.experts");
  if (!experts.is_array() || static_cast<int>(experts.size()) != manifest.num_experts) {
    fields.fail("programs.experts", "expected a list of router.num_experts (" + std::to_string(manifest.num_experts) +
                                        ") programs");
  }
  read_boundaries(router, fields, &manifest);
  for (int i = 0; i < manifest.num_experts; ++i) {
    const std::string field = "programs.experts[" + std::to_string(i) + "]";
    manifest.experts.push_back(program(experts[i], field, fields, cpu_ops));
    if (experts[i].contains("timesteps")) {  // must agree with the router
      const int lo = i == 0 ? 0 : manifest.boundaries[i - 1];
      const int hi = i + 1 == manifest.num_experts ? manifest.num_train_timesteps : manifest.boundaries[i];
      const json& range = experts[i].at("timesteps");
      if (!range.is_array() || range.size() != 2 || range[0] != lo || range[1] != hi) {
        fields.fail(field + ".timesteps", "expected [" + std::to_string(lo) + ", " + std::to_string(hi) +
                                              "] (the router's stage " + std::to_string(i) + ")");
      }
    }
  }

  const json& files = fields.object(root, "files", "files");
  for (const auto& [name, record] : files.items()) {
    FileRecord entry;
    entry.size = record.is_object() && record.contains("size") && record.at("size").is_number_integer()
                     ? record.at("size").get<std::int64_t>()
                     : -1;
    if (entry.size < 0) fields.fail("files." + name + ".size", "expected a size in bytes");
    if (record.contains("sha256") && record.at("sha256").is_string()) entry.sha256 = record.at("sha256");
    manifest.files[name] = entry;
  }
  for (const std::string& name : cpu_ops_files(manifest)) {  // as the Python reader checks them
    if (!manifest.files.count(name)) fields.fail("files", "has no record of " + name);
  }
  return manifest;
}

namespace {

// The program dimension `dim` of `shape` (rank `rank`), or UserError naming the field.
std::int64_t dimension(const Manifest& manifest, const ProgramInfo& info, const std::string& name,
                       const Shape& shape, std::size_t rank, std::size_t dim, const std::string& field) {
  if (shape.size() != rank) {
    throw UserError(manifest.path("manifest.json") + ": field '" + field + "': " + info.path + " has no " + name +
                    " of rank " + std::to_string(rank) + "; not a program of this export format");
  }
  return shape[dim];
}

void agree(const Manifest& manifest, const std::string& field, std::int64_t value, const std::string& relative,
           const std::string& what, std::int64_t expected) {
  if (value != expected) {
    throw UserError(manifest.path("manifest.json") + ": field '" + field + "': " + std::to_string(value) +
                    " does not match the program: " + relative + " has " + what + " " + std::to_string(expected));
  }
}

Shape input_shape(const ProgramInfo& info, const std::string& name) {
  auto found = info.inputs.find(name);
  return found == info.inputs.end() ? Shape() : found->second;
}

}  // namespace

void check_program_sizes(const Manifest& manifest, const std::set<int>& experts, bool decoder) {
  struct stat vocab {};
  if (stat(manifest.path(manifest.vocab).c_str(), &vocab) == 0 && vocab.st_size > kMaxVocabBytes) {
    throw UserError(manifest.path("manifest.json") + ": field 'tokenizer.vocab': " + manifest.path(manifest.vocab) +
                    " is larger than " + std::to_string(kMaxVocabBytes >> 20) + " MiB (a vocab is a few hundred KB)");
  }
  const ProgramInfo text = read_program_info(manifest.path(manifest.text_encoder.model));
  const std::string& text_name = manifest.text_encoder.model;
  const std::int64_t length = manifest.tokenizer.max_length;
  agree(manifest, "tokenizer.max_length", length, text_name, "input_ids length",
        dimension(manifest, text, "input 'input_ids'", input_shape(text, "input_ids"), 2, 1,
                  "tokenizer.max_length"));
  const std::int64_t hidden =
      dimension(manifest, text, "output", text.output, 3, 2, "programs.text_encoder.hidden_size");
  if (manifest.hidden_size > 0) {
    agree(manifest, "programs.text_encoder.hidden_size", manifest.hidden_size, text_name, "hidden size", hidden);
  }
  auto check_latents = [&](const ProgramInfo& info, const std::string& relative, const std::string& name) {
    const Shape shape = input_shape(info, name);
    const std::string input = "input '" + name + "'";
    agree(manifest, "latent.channels", manifest.latent_channels, relative, name + " channels",
          dimension(manifest, info, input, shape, 4, 1, "latent"));
    agree(manifest, "latent.height", manifest.latent_height, relative, name + " height",
          dimension(manifest, info, input, shape, 4, 2, "latent"));
    agree(manifest, "latent.width", manifest.latent_width, relative, name + " width",
          dimension(manifest, info, input, shape, 4, 3, "latent"));
  };
  for (int i : experts) {
    const std::string& relative = manifest.experts[i].model;
    const ProgramInfo expert = read_program_info(manifest.path(relative));
    check_latents(expert, relative, "sample");
    const std::string field = "programs.experts[" + std::to_string(i) + "]";
    const Shape states = input_shape(expert, "encoder_hidden_states");
    agree(manifest, "tokenizer.max_length", length, relative, "encoder_hidden_states length",
          dimension(manifest, expert, "input 'encoder_hidden_states'", states, 3, 1, field));
    agree(manifest, field, hidden, relative, "encoder_hidden_states width",
          dimension(manifest, expert, "input 'encoder_hidden_states'", states, 3, 2, field));
    if (expert.tables.empty() || expert.tables[0].empty()) {
      throw UserError(manifest.path("manifest.json") + ": field 'router.num_train_timesteps': " + expert.path +
                      " has no timestep table (not exported by tools/export_model.py)");
    }
    agree(manifest, "router.num_train_timesteps", manifest.num_train_timesteps, relative, "timestep table rows",
          expert.tables[0][0]);
  }
  if (decoder) {
    const std::string& relative = manifest.vae_decoder.model;
    const ProgramInfo info = read_program_info(manifest.path(relative));
    check_latents(info, relative, "latents");
    agree(manifest, "image.height", manifest.image_height, relative, "output height",
          dimension(manifest, info, "output", info.output, 4, 2, "image"));
    agree(manifest, "image.width", manifest.image_width, relative, "output width",
          dimension(manifest, info, "output", info.output, 4, 3, "image"));
  }
}

void verify_files(const Manifest& manifest, const std::vector<std::string>& names, bool sha256) {
  for (const std::string& name : names) {
    const std::string path = manifest.path(name);
    struct stat info {};
    if (stat(path.c_str(), &info) != 0 || !S_ISREG(info.st_mode)) throw UserError(path + ": file not found");
    auto record = manifest.files.find(name);
    if (record == manifest.files.end()) {
      throw UserError(manifest.path("manifest.json") + ": field 'files': has no record of " + name);
    }
    if (info.st_size != record->second.size) {
      throw UserError(path + ": damaged (expected " + std::to_string(record->second.size) + " bytes, found " +
                      std::to_string(info.st_size) + ")");
    }
    if (sha256 && !record->second.sha256.empty() && sha256_hex(path) != record->second.sha256) {
      throw UserError(path + ": damaged (SHA-256 checksum does not match the one written with it)");
    }
  }
}

}  // namespace ernie_vilg2
