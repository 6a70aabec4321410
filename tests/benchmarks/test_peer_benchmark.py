"""The peer benchmark's pure parts (benchmarks/vs_pytorch.py and its workers), without torch:
ERNIE's parameters map one to one onto a same-size BertModel's (the padding row as Paddle
reads it), Linear weights are transposed into torch's layout, and a peer venv without
transformers is one line naming requirements/peer.txt."""
import json
import os
import re
import stat
import subprocess
import sys

import pytest

from helpers.paths import REPO_ROOT

BENCHMARKS = os.path.join(REPO_ROOT, "benchmarks")
sys.path.insert(0, BENCHMARKS)

import peer_pipeline  # noqa: E402
import peer_worker  # noqa: E402
import vs_pytorch  # noqa: E402

# Paddle's TransformerEncoderLayer (post-LN) part -> BERT's layer part that computes the same.
LAYER_PARTS = {"self_attn.q_proj": "attention.self.query", "self_attn.k_proj": "attention.self.key",
               "self_attn.v_proj": "attention.self.value", "self_attn.out_proj": "attention.output.dense",
               "norm1": "attention.output.LayerNorm", "linear1": "intermediate.dense", "linear2": "output.dense",
               "norm2": "output.LayerNorm"}
# transformers 5.23 BertModel(BertConfig(num_hidden_layers=2)).state_dict() keys.
BERT_KEYS = ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
             "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"]
BERT_KEYS += [f"encoder.layer.{n}.{part}.{kind}" for n in range(2) for part in LAYER_PARTS.values()
              for kind in ("weight", "bias")]
BERT_KEYS += ["pooler.dense.weight", "pooler.dense.bias"]


@pytest.fixture(scope="module")
def ernie():
    from ernie_vilg2.models.text_encoder import build_text_encoder

    return build_text_encoder(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=16, max_position_embeddings=12)


def test_ernie_parameters_map_one_to_one_onto_bert(ernie):
    names = {k: peer_pipeline.bert_name(k) for k in ernie.state_dict()}
    assert sorted(names.values()) == sorted(BERT_KEYS)
    for ernie_part, bert_part in LAYER_PARTS.items():
        for kind in ("weight", "bias"):
            assert names[f"encoder.layers.1.{ernie_part}.{kind}"] == f"encoder.layer.1.{bert_part}.{kind}"
    assert names["embeddings.layer_norm.weight"] == "embeddings.LayerNorm.weight"


def test_bert_state_zeroes_the_padding_row_as_paddle_reads_it(ernie):
    import paddle

    words = ernie.embeddings.word_embeddings
    assert words.weight.numpy()[0].any()  # initialised like any row ...
    assert not words(paddle.to_tensor([0])).numpy().any()  # ... but Paddle's lookup of the padding id is zeros
    state = peer_pipeline.bert_state(peer_worker.torch_layout(ernie), pad_token_id=0)
    table = state["embeddings.word_embeddings.weight"]
    assert not table[0].any() and (table[1:] == words.weight.numpy()[1:]).all()
    assert (state["encoder.layer.0.attention.self.query.weight"] ==
            ernie.encoder.layers[0].self_attn.q_proj.weight.numpy().T).all()


def test_a_parameter_bert_lacks_is_named():
    with pytest.raises(ValueError, match=re.escape("'embeddings.task_type_embeddings.weight'")):
        peer_pipeline.bert_name("embeddings.task_type_embeddings.weight")


def test_bert_config_copies_the_sizes(ernie):
    config = peer_pipeline.bert_config(ernie.config.to_dict())
    assert (config["vocab_size"], config["max_position_embeddings"], config["intermediate_size"]) == (50, 12, 16)
    assert (config["type_vocab_size"], config["layer_norm_eps"], config["hidden_act"]) == (16, 1e-12, "gelu")
    with pytest.raises(ValueError, match="use_task_id"):
        peer_pipeline.bert_config({**ernie.config.to_dict(), "use_task_id": True})


def test_torch_layout_transposes_linear_weights_only(ernie):
    state = peer_worker.torch_layout(ernie)
    q = ernie.encoder.layers[0].self_attn.q_proj.weight.numpy()
    assert (state["encoder.layers.0.self_attn.q_proj.weight"] == q.T).all()
    linear1 = ernie.encoder.layers[0].linear1.weight.numpy()  # [8, 16] in Paddle
    assert state["encoder.layers.0.linear1.weight"].shape == (16, 8) == linear1.T.shape
    words = ernie.embeddings.word_embeddings.weight.numpy()
    assert (state["embeddings.word_embeddings.weight"] == words).all()


def test_pipeline_config_without_transformers_is_one_line(tmp_path, capsys):
    peer = tmp_path / "python"  # a "python" whose every import check fails
    peer.write_text("#!/bin/sh\nexit 1\n")
    peer.chmod(peer.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(SystemExit) as exc:
        vs_pytorch.parse_args(["--configs", "tiny-pipeline", "--peer-python", str(peer)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "has no transformers" in err and "requirements/peer.txt" in err
    # The U-Net configs do not need it.
    assert vs_pytorch.parse_args(["--configs", "tiny", "--peer-python", str(peer)]).configs == ["tiny"]


def test_variant_environment_reaches_the_worker_or_stops_it(monkeypatch):
    """glibc reads MALLOC_MMAP_THRESHOLD_ at process start: the lean variant's process must be
    started with it (vs_pytorch's Worker passes it), and a worker started without it refuses."""
    assert peer_worker.variant_environment("fast-lean") == {"MALLOC_MMAP_THRESHOLD_": "131072"}
    assert peer_worker.variant_environment("fast") == {}
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    environ = dict(os.environ)
    with pytest.raises(SystemExit, match="MALLOC_MMAP_THRESHOLD_"):
        peer_worker.paddle_variant("fast-lean")
    assert dict(os.environ) == environ  # refused before changing anything


@pytest.mark.parametrize("variant,mkl,malloc", [
    ("stock", None, False), ("stock-avx2", "5", False), ("fast-paddle", "5", True), ("fast", "5", True),
    ("fast-lean", "5", False),  # glibc's thresholds come from the process's environment
])
def test_each_variant_gets_exactly_its_cpu_settings(monkeypatch, variant, mkl, malloc):
    """On an AMD CPU with AVX2: MKL's AVX2 path for all but stock, glibc keeping freed memory
    for the fast variants that keep it; set in the worker's process, whatever it imported."""
    from ernie_vilg2.utils import malloc_tuning, mkl_dispatch

    monkeypatch.setattr(mkl_dispatch, "amd_with_avx2", lambda cpuinfo: True)
    calls = []

    class Libc:
        gnu_get_libc_version = None

        def mallopt(self, *args):
            calls.append(args)
            return 1

    monkeypatch.setattr(malloc_tuning.ctypes, "CDLL", lambda name: Libc())
    for name in ("MKL_DEBUG_CPU_TYPE", "ERNIE_VILG2_MKL_AVX2", "ERNIE_VILG2_CPU_OPS", "ERNIE_VILG2_MALLOC_TUNING"):
        monkeypatch.setenv(name, "unset")  # restored after the test
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    if peer_worker.variant_environment(variant):
        monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    else:
        monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    peer_worker.paddle_variant(variant)
    assert os.environ.get("MKL_DEBUG_CPU_TYPE") == mkl
    assert bool(calls) == malloc


def test_import_profile_charges_each_module_its_own_memory(tmp_path):
    """A module that touches 48 MiB and imports one that touches 24 MiB: each is charged its
    own share (not the nested module's), and the nested one is traced to its importer. In a
    fresh process: here, freed memory kept by earlier tests would be reused without growing."""
    import import_memory

    (tmp_path / "outer_probe.py").write_text("import inner_probe\nkept = b'x' * (48 << 20)\n")
    (tmp_path / "inner_probe.py").write_text("kept = b'x' * (24 << 20)\n")
    script = (f"import json, sys; sys.path[:0] = [{str(tmp_path)!r}, {BENCHMARKS!r}]\n"
              "import import_memory\nprofile = import_memory.ImportProfile()\nsys.meta_path.insert(0, profile)\n"
              "import outer_probe\nprint(json.dumps([profile.exclusive, profile.importer]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")})
    assert done.returncode == 0, done.stderr
    exclusive, importer = json.loads(done.stdout)
    assert exclusive["outer_probe"] == pytest.approx(48, abs=4)
    assert exclusive["inner_probe"] == pytest.approx(24, abs=4)
    assert importer["inner_probe"] == "outer_probe"
    assert import_memory.package_of("paddlenlp.taskflow.text") == "paddlenlp.taskflow"
    assert import_memory.package_of("pyarrow.lib") == "pyarrow"


def test_program_variant_samples_as_the_dynamic_graph(tmp_path, monkeypatch):
    """fast-program's sampling step runs the U-Net's exported program (the C++ operators in it)
    through a Paddle Inference predictor: the same step as the dynamic graph's."""
    import numpy as np
    import paddle

    from ernie_vilg2 import ops

    if not ops.cpu_ops_available():
        pytest.skip("the C++ CPU operators are not built")
    for name in ("MKL_DEBUG_CPU_TYPE", "ERNIE_VILG2_MKL_AVX2", "ERNIE_VILG2_CPU_OPS", "ERNIE_VILG2_MALLOC_TUNING"):
        monkeypatch.setenv(name, os.environ.get(name, "unset"))  # the variant sets them; restored after
    unet = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=[32, 32], layers_per_block=1,
                down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], norm_num_groups=8,
                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], attention_head_dim=8, cross_attention_dim=16)
    spec = dict(seed=0, unet=unet, text_length=6, scheduler=vs_pytorch.SCHEDULER)
    side = peer_worker.PaddleSide(spec, "fast")
    side.unet.eval()
    side.scheduler.set_timesteps(10)
    t = side.scheduler.timesteps[2]
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.standard_normal((2, 4, 8, 8)).astype("float32"))
    context = paddle.to_tensor(rng.standard_normal((4, 6, 16)).astype("float32"))
    dynamic = side.sample_step(x, t, context, 3.0).numpy()
    side.export_unet(str(tmp_path / "program"), 1000, 6)
    assert os.path.isfile(tmp_path / "program" / "unet" / "inference.cpu_ops.json")  # the operators' program
    program = side.sample_step(x, t, context, 3.0).numpy()
    assert np.abs(program - dynamic).max() < 1e-5
    assert np.abs(dynamic).max() > 0.1  # a real step, not zeros


def test_program_variant_is_for_the_unet_configs(capsys):
    with pytest.raises(SystemExit) as exc:
        vs_pytorch.parse_args(["--configs", "tiny-pipeline", "--variants", "fast-program",
                               "--peer-python", sys.executable])
    assert exc.value.code == 2
    assert "--variants fast-program" in capsys.readouterr().err.strip().splitlines()[-1]
