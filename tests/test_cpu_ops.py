"""The C++ CPU attention operator (ernie_vilg2/ops) and the MKL dispatch setting."""
import numpy as np
import paddle
import pytest
from cpu_ops import require_cpu_attention_op

from ernie_vilg2 import ops
from ernie_vilg2.ops import build as ops_build
from ernie_vilg2.utils import mkl_dispatch


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
# scores in one call (batch x heads spread over the OpenMP threads).
@pytest.mark.parametrize("shape,spread", [((1, 1, 1, 1, 4), 1.0), ((2, 3, 37, 5, 8), 1.0),
                                          ((1, 2, 130, 300, 16), 1.0), ((2, 2, 64, 77, 8), 8.0),
                                          ((1, 2, 130, 300, 40), 1.0), ((2, 4, 384, 384, 8), 1.0)])
@pytest.mark.parametrize("scale", [1.0, 0.35])
def test_equals_the_reference(shape, spread, scale):
    require_cpu_attention_op()
    b, h, n, l, d = shape
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype("float32") * f for s, f in
              (((b, h, n, d), spread), ((b, h, l, d), spread), ((b, h, l, d), 1.0), ((b, h, n, d), 1.0))]
    q, k, v = (paddle.to_tensor(a, stop_gradient=False) for a in arrays[:3])
    out = ops.cpu_attention(q, k, v, scale)
    (out * paddle.to_tensor(arrays[3])).sum().backward()
    want = reference(*arrays, scale)
    for name, got, ref in zip(("out", "grad q", "grad k", "grad v"), (out, q.grad, k.grad, v.grad), want):
        assert list(got.shape) == list(ref.shape)
        np.testing.assert_allclose(got.numpy(), ref, atol=2e-5 * spread**2, rtol=1e-4, err_msg=name)


def test_no_gradient_without_grad():
    require_cpu_attention_op()
    q = paddle.randn([1, 2, 9, 4])
    with paddle.no_grad():
        out = ops.cpu_attention(q, q, q)
    assert out.stop_gradient and list(out.shape) == [1, 2, 9, 4]


@pytest.mark.parametrize("bad,message", [("float64", "float32"), ("3d", r"\[batch, heads, tokens, dim\]")])
def test_bad_input_is_an_error_not_a_crash(bad, message):
    require_cpu_attention_op()
    q = paddle.randn([1, 2, 8, 4])
    q = q.astype("float64") if bad == "float64" else q[0]
    with pytest.raises(Exception, match=message):
        ops.cpu_attention(q, q, q)


def test_a_strided_view_gives_the_result_of_its_copy():
    require_cpu_attention_op()
    q = paddle.randn([1, 2, 4, 8]).transpose([0, 1, 3, 2])
    assert not q.is_contiguous()
    np.testing.assert_array_equal(ops.cpu_attention(q, q, q).numpy(), ops.cpu_attention(*[q.contiguous()] * 3).numpy())


def test_a_stale_build_is_not_used(tmp_path, monkeypatch):
    require_cpu_attention_op()
    stamp = tmp_path / "stamp.json"
    stamp.write_text('{"paddle": "0.0.0"}')
    monkeypatch.setattr(ops, "STAMP_FILE", str(stamp))
    monkeypatch.setattr(ops, "_loaded", {})
    with pytest.warns(UserWarning, match="another Paddle or source.*ernie_vilg2.ops.build"):
        assert ops.cpu_attention(paddle.ones([1, 1, 2, 2]), paddle.ones([1, 1, 2, 2]), paddle.ones([1, 1, 2, 2])) is None


def test_switched_off_by_the_environment(monkeypatch):
    require_cpu_attention_op()
    monkeypatch.setenv("ERNIE_VILG2_CPU_OPS", "0")
    monkeypatch.setattr(ops, "_loaded", {})
    assert not ops.cpu_attention_available()
    assert ops.cpu_attention(paddle.ones([1, 1, 2, 2]), paddle.ones([1, 1, 2, 2]), paddle.ones([1, 1, 2, 2])) is None


def test_build_without_a_compiler_says_so(monkeypatch, capsys):
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    assert ops_build.main([]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "error: CPU attention operator: no C++ compiler: '/nonexistent/g++' not found (install g++, or set CXX)"]


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
