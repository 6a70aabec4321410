"""The C++ CPU operators (ernie_vilg2/ops: attention, convolution) and the MKL dispatch setting."""
import os
import platform
import shutil

import numpy as np
import paddle
import pytest

from ernie_vilg2 import ops
from ernie_vilg2.ops import build as ops_build
from ernie_vilg2.utils import isa_caps, malloc_tuning, mkl_dispatch

from helpers.cpu_ops import require_cpu_ops


def reference(q, k, v, grad_out, scale):
    """softmax(scale q k^T) v and its gradients in float64 NumPy."""
    q, k, v, grad_out = (x.astype("float64") for x in (q, k, v, grad_out))
    scores = scale * q @ k.swapaxes(-1, -2)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    grad_probs = grad_out @ v.swapaxes(-1, -2)
    grad_scores = probs * (grad_probs - (grad_probs * probs).sum(-1, keepdims=True))
    return (probs @ v, scale * grad_scores @ k, scale * grad_scores.swapaxes(-1, -2) @ q,
            probs.swapaxes(-1, -2) @ grad_out)


# (batch, heads, queries, keys, dim): one token; odd sizes; several query blocks with an odd
# last one (300 keys: blocks of 109 rows); large scores (softmax stability); heads wider than
# 32 dims (the gradient products take MKL's gemm instead of the narrow-head loop); over 1 M
# scores in one call (batch x heads spread over the OpenMP threads); 8-dim heads over 128 keys or
# more (the narrow forward: a last group of rows and a last vector of keys part-filled, scores
# spread far enough to clamp its exponential).
@pytest.mark.parametrize("shape,spread", [((1, 1, 1, 1, 4), 1.0), ((2, 3, 37, 5, 8), 1.0),
                                          ((1, 2, 130, 300, 16), 1.0), ((2, 2, 64, 77, 8), 8.0),
                                          ((1, 2, 130, 300, 40), 1.0), ((2, 4, 384, 384, 8), 1.0),
                                          ((1, 3, 9, 128, 8), 1.0), ((2, 2, 37, 301, 8), 8.0)])
@pytest.mark.parametrize("scale", [1.0, 0.35])
def test_equals_the_reference(shape, spread, scale):
    require_cpu_ops()
    b, h, n, l, d = shape
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype("float32") * f for s, f in
              (((b, h, n, d), spread), ((b, h, l, d), spread), ((b, h, l, d), 1.0), ((b, h, n, d), 1.0))]
    # The operator's layout is [B, tokens, heads, dim]; the reference's [B, heads, tokens, dim].
    q, k, v = (paddle.to_tensor(a.transpose(0, 2, 1, 3), stop_gradient=False) for a in arrays[:3])
    out = ops.cpu_attention(q, k, v, scale)
    (out * paddle.to_tensor(arrays[3].transpose(0, 2, 1, 3))).sum().backward()
    want = reference(*arrays, scale)
    for name, got, ref in zip(("out", "grad q", "grad k", "grad v"), (out, q.grad, k.grad, v.grad), want):
        got = got.numpy().transpose(0, 2, 1, 3)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=2e-5 * spread**2, rtol=1e-4, err_msg=name)


def test_the_process_runs_the_path_it_reports():
    """The widest path of this CPU, or the one ERNIE_VILG2_CPU_ISA forces (tests/ops/test_cpu_paths.py
    runs this file on each), with MKL and oneDNN capped there (the test suite's tune_cpu_process)."""
    require_cpu_ops()
    config = ops.cpu_ops_config()
    requested = os.environ.get(isa_caps.VARIABLE, "auto")
    assert config["requested"] == requested
    assert config["isa"] == (config["paths"][0] if requested == "auto" else requested)
    capped = {"generic": ("SSE4.2", "sse41"), "avx2": ("AVX2", "avx2")}
    if requested in capped:
        assert (config["mkl"], config["onednn"]) == capped[requested]
    assert config["attention_block_bytes"] == min(config["l2_bytes"] // 4, 128 << 10)


def test_no_gradient_without_grad():
    require_cpu_ops()
    q = paddle.randn([1, 2, 9, 4])
    with paddle.no_grad():
        out = ops.cpu_attention(q, q, q)
    assert out.stop_gradient and list(out.shape) == [1, 2, 9, 4]  # [B, tokens, heads, dim]


@pytest.mark.parametrize("bad,message", [("float64", "float32"), ("3d", r"\[batch, tokens, heads, dim\]")])
def test_bad_input_is_an_error_not_a_crash(bad, message):
    require_cpu_ops()
    q = paddle.randn([1, 2, 8, 4])
    q = q.astype("float64") if bad == "float64" else q[0]
    with pytest.raises(Exception, match=message):
        ops.cpu_attention(q, q, q)


def test_a_strided_view_gives_the_result_of_its_copy():
    require_cpu_ops()
    q = paddle.randn([1, 2, 4, 8]).transpose([0, 1, 3, 2])
    assert not q.is_contiguous()
    np.testing.assert_array_equal(ops.cpu_attention(q, q, q).numpy(), ops.cpu_attention(*[q.contiguous()] * 3).numpy())


# (batch, in, height, width, out, kernel, stride, padding, dilation): the U-Net's 3x3 and 1x1
# layers, its stride-2 downsampler, a dilated kernel, odd and non-square sizes, batch 1.
@pytest.mark.parametrize("shape", [(2, 8, 12, 12, 16, 3, 1, 1, 1), (1, 4, 9, 7, 6, 3, 1, 1, 1),
                                   (3, 16, 10, 10, 8, 3, 2, 1, 1), (2, 12, 5, 6, 20, 1, 1, 0, 1),
                                   (2, 5, 11, 13, 7, 3, 1, 2, 2), (2, 64, 16, 16, 64, 3, 1, 1, 1)])
def test_conv2d_equals_the_reference(shape):
    require_cpu_ops()
    b, c, h, w, o, k, stride, padding, dilation = shape
    rng = np.random.default_rng(0)
    x64, w64 = rng.standard_normal((b, c, h, w)), rng.standard_normal((o, c, k, k)) / np.sqrt(c * k * k)
    bias64 = rng.standard_normal(o)
    tensors = [paddle.to_tensor(a.astype("float32"), stop_gradient=False) for a in (x64, w64, bias64)]
    out = ops.cpu_conv2d(*tensors, [stride] * 2, [padding] * 2, [dilation] * 2)
    grad_out = rng.standard_normal(out.shape)
    (out * paddle.to_tensor(grad_out.astype("float32"))).sum().backward()
    # Paddle's own conv2d in float64 is the reference.
    ref = [paddle.to_tensor(a, stop_gradient=False) for a in (x64, w64, bias64)]
    want = paddle.nn.functional.conv2d(*ref, stride=stride, padding=padding, dilation=dilation)
    (want * paddle.to_tensor(grad_out)).sum().backward()
    for name, got, expected in zip(("out", "grad x", "grad weight", "grad bias"),
                                   [out] + [t.grad for t in tensors], [want] + [t.grad for t in ref]):
        assert list(got.shape) == list(expected.shape), name
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4, rtol=1e-4, err_msg=name)


def test_conv2d_takes_a_strided_gradient():
    require_cpu_ops()
    x, w, b = paddle.randn([2, 3, 6, 6]), paddle.randn([4, 3, 3, 3]), paddle.randn([4])
    for t in (x, w, b):
        t.stop_gradient = False
    out = ops.cpu_conv2d(x, w, b, [1, 1], [1, 1], [1, 1])
    out.transpose([0, 1, 3, 2]).sum(axis=[2, 3]).mul(paddle.arange(4, dtype="float32")).sum().backward()
    assert float(b.grad.abs().max()) > 0 and x.grad.shape == x.shape


@pytest.mark.parametrize("bad,message", [("float64", "float32"), ("channels", "input channels 3 do not match"),
                                         ("3d", "4-D")])
def test_conv2d_bad_input_is_an_error_not_a_crash(bad, message):
    require_cpu_ops()
    x, w, b = paddle.randn([1, 3, 8, 8]), paddle.randn([4, 3, 3, 3]), paddle.randn([4])
    if bad == "float64":
        x = x.astype("float64")
    elif bad == "channels":
        w = paddle.randn([4, 5, 3, 3])
    else:
        x = x[0]
    with pytest.raises(Exception, match=message):
        ops.cpu_conv2d(x, w, b, [1, 1], [1, 1], [1, 1])


def test_a_stale_build_is_not_used(tmp_path, monkeypatch):
    require_cpu_ops()
    stamp = tmp_path / "stamp.json"
    stamp.write_text('{"paddle": "0.0.0"}')
    monkeypatch.setattr(ops, "STAMP_FILE", str(stamp))
    monkeypatch.setattr(ops, "_loaded", {})
    with pytest.warns(UserWarning, match="another Paddle or source.*ernie_vilg2.ops.build"):
        assert ops.cpu_attention(paddle.ones([1, 1, 2, 2]), paddle.ones([1, 1, 2, 2]), paddle.ones([1, 1, 2, 2])) is None


def test_switched_off_by_the_environment(monkeypatch):
    require_cpu_ops()
    monkeypatch.setenv("ERNIE_VILG2_CPU_OPS", "0")
    monkeypatch.setattr(ops, "_loaded", {})
    assert not ops.cpu_ops_available()
    assert ops.cpu_attention(paddle.ones([1, 1, 2, 2]), paddle.ones([1, 1, 2, 2]), paddle.ones([1, 1, 2, 2])) is None


def test_build_without_a_compiler_says_so(monkeypatch, capsys):
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    assert ops_build.main([]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "error: CPU operators: no C++ compiler: '/nonexistent/g++' not found (install g++, or set CXX)"]


def test_a_compiler_without_avx512_builds_the_operators_without_that_path(tmp_path):
    fake = tmp_path / "c++"
    fake.write_text("#!/bin/sh\necho 'no such instruction: vfmadd231ps %zmm1' >&2\nexit 1\n")
    fake.chmod(0o755)
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert ops_build.avx512_flags(str(fake)) == (["-DERNIE_VILG2_NO_AVX512"] if x86 else [])
    assert ops_build.avx512_flags(str(tmp_path / "missing")) == (["-DERNIE_VILG2_NO_AVX512"] if x86 else [])
    if shutil.which(ops_build.compiler()):
        assert ops_build.avx512_flags(ops_build.compiler()) == []  # GCC and Clang of the last decade can


AMD = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n"
AMD_OLD = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx\n"
INTEL = "vendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx avx2 fma avx512f\n"


@pytest.mark.parametrize("cpuinfo,environ,expected", [
    (AMD, {}, "5"), (AMD_OLD, {}, None), (INTEL, {}, None),
    (AMD, {"MKL_DEBUG_CPU_TYPE": "2"}, "2"),  # the user's own choice stays
    (AMD, {"ERNIE_VILG2_MKL_AVX2": "0"}, None),  # opted out
])
def test_mkl_avx2_dispatch(tmp_path, cpuinfo, environ, expected):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    mkl_dispatch.prefer_avx2(environ, str(path))
    assert environ.get("MKL_DEBUG_CPU_TYPE") == expected
    mkl_dispatch.prefer_avx2(env := {}, str(tmp_path / "missing"))
    assert env == {}


@pytest.mark.parametrize("environ,libc,expected", [
    ({}, "libc.so.6", True),  # glibc: mallopt accepts both thresholds
    ({"ERNIE_VILG2_MALLOC_TUNING": "0"}, "libc.so.6", False),  # opted out
    ({"MALLOC_TRIM_THRESHOLD_": "0"}, "libc.so.6", False),  # the user's own setting stays
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1"}, "libc.so.6", False),
    ({}, "libnonexistent.so.9", False),  # no glibc
])
def test_malloc_tuning(environ, libc, expected):
    assert malloc_tuning.keep_freed_memory(environ, libc) is expected
