// The export folder's manifest.json (the contract in deploy/README.md): read, check, and
// verify the files it lists.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "errors.h"
#include "sampler_settings.h"
#include "tokenizer.h"

namespace ernie_vilg2 {

struct ProgramFiles {
  std::string model;   // path relative to the export folder
  std::string params;
  // The same program traced with the project's C++ CPU operators (cpu_ops.h); empty where the
  // export has none. Its parameters: params_with_cpu_ops (the manifest's default: params).
  std::string model_with_cpu_ops, params_with_cpu_ops;
};

// The manifest's optional `cpu_ops`: the export's copy of the operators' library (relative to
// the folder; empty: no cpu_ops entry) and the Paddle it was built for.
struct CpuOpsLibrary {
  std::string library, paddle_version, paddle_commit;
};

struct FileRecord {
  std::int64_t size = -1;
  std::string sha256;  // empty when not recorded
};

struct Manifest {
  std::string folder;
  int image_height = 0, image_width = 0;
  int latent_channels = 0, latent_height = 0, latent_width = 0;
  int hidden_size = 0;  // programs.text_encoder.hidden_size; 0 when not recorded
  double scaling_factor = 1.0;
  int num_experts = 0, num_train_timesteps = 0;
  // router.boundaries: the N - 1 increasing timesteps where the experts switch (an export
  // without them: uniform, i * T / N)
  std::vector<int> boundaries;
  Samplers samplers;  // each sampler's resolved settings; their num_train_timesteps equal the router's
  std::string vocab;          // tokenizer vocab, relative to the folder
  TokenizerConfig tokenizer;  // its vocab_file is path(vocab)
  ProgramFiles text_encoder, vae_decoder;
  std::vector<ProgramFiles> experts;  // expert i runs timesteps [b_i, b_{i+1}), b_0 = 0, b_N = T
  CpuOpsLibrary cpu_ops;
  std::map<std::string, FileRecord> files;

  std::string path(const std::string& relative) const { return folder + "/" + relative; }
  // The router: the number of boundaries at or below min(max(t, 0), T - 1).
  int expert_for_timestep(int t) const;
};

// Reads FOLDER/manifest.json; throws UserError ("--model: ...", "FOLDER/manifest.json: ...").
Manifest load_manifest(const std::string& folder);

// Checks every size of the manifest against the program that fixes it (tokenizer.max_length
// against the text encoder's input_ids, the latent size against the experts' and the VAE
// decoder's inputs, the image size against the decoder's output, T against the experts'
// timestep tables), for the text encoder, the experts `experts` and, with `decoder`, the VAE
// decoder; throws UserError naming the field. Call it after verify_files, before allocating.
void check_program_sizes(const Manifest& manifest, const std::set<int>& experts, bool decoder);

// Checks the sizes (and with `sha256`, the SHA-256 sums) that the manifest records for
// the files `names` (paths relative to the folder); throws UserError naming the file.
void verify_files(const Manifest& manifest, const std::vector<std::string>& names, bool sha256);

}  // namespace ernie_vilg2
