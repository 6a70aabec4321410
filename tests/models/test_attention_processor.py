"""FastAttnProcessor computes the stock attention (and the key-word emphasis) exactly.

Each case runs the whole-matrix path (default chunk size), the query-block path
(``chunk_bytes`` small enough for blocks of a few rows, odd-sized last block included) and
the C++ CPU operator (ernie_vilg2/ops; cases with an attention mask keep the Paddle paths),
and compares forward outputs and the gradients of the input, the context and every
parameter with PPDiffusers' AttnProcessor, or with the emphasis formula written out.
"""
from types import SimpleNamespace

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from ppdiffusers import UNet2DConditionModel
from ppdiffusers.models.attention_processor import Attention, AttnProcessor

import ernie_vilg2.models.attention_processor as attention_processor
from ernie_vilg2.models.attention_processor import FastAttnProcessor, _row_blocks

from helpers.cpu_ops import require_cpu_ops

HEADS, DIM_HEAD, QUERY_DIM, TEXT_DIM = 4, 8, 32, 24


class EmphasisReference:
    """The paper's formula as written: softmax(Q K^T * scale * (1 + w_t m) + M) V, in that order."""

    def __init__(self, w_t):
        self.w_t = w_t

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, key_token_mask=None,
                 **kwargs):
        batch, tokens, _ = encoder_hidden_states.shape
        mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        v = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        factor = 1 + self.w_t * paddle.to_tensor(key_token_mask).reshape([-1, 1, 1, tokens])
        scores = paddle.matmul(q, k, transpose_y=True) * attn.scale * factor
        if mask is not None:
            scores = scores + mask
        out = attn.batch_to_head_dim(paddle.matmul(F.softmax(scores, axis=-1), v))
        return attn.to_out[0](out)


def make_layer(cross):
    paddle.seed(0)
    return Attention(query_dim=QUERY_DIM, cross_attention_dim=TEXT_DIM if cross else None, heads=HEADS,
                     dim_head=DIM_HEAD, bias=True)


def run(attn, processor, x, context, grad=True, **kwargs):
    """Output and gradients (input, context, parameters) of a weighted sum of the output."""
    attn.set_processor(processor)
    x = x.detach()
    x.stop_gradient = not grad
    if context is not None:
        context = context.detach()
        context.stop_gradient = not grad
    if not grad:
        with paddle.no_grad():
            return attn(x, context, **kwargs).numpy(), {}
    out = attn(x, context, **kwargs)
    weights = paddle.to_tensor(np.random.default_rng(1).standard_normal(out.shape).astype("float32"))
    (out * weights).sum().backward()
    grads = {"x": x.grad.numpy()}
    if context is not None:
        grads["context"] = context.grad.numpy()
    grads.update({n: p.grad.numpy() for n, p in attn.named_parameters()})
    attn.clear_gradients()
    return out.numpy(), grads


def assert_same(a, b, atol=2e-5):
    np.testing.assert_allclose(a[0], b[0], atol=atol, rtol=1e-5)
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        np.testing.assert_allclose(a[1][name], b[1][name], atol=atol, rtol=1e-4, err_msg=name)


PATHS = ["whole", "blocks", "cpp"]


@pytest.fixture
def path(request, monkeypatch):
    """Which implementation runs: the C++ operator for every size (checked that it ran), or never."""
    calls = []
    if request.param == "cpp":
        require_cpu_ops()
        op = attention_processor.cpu_attention
        monkeypatch.setattr(attention_processor, "cpu_attention", lambda *a: calls.append(1) or op(*a))
    monkeypatch.setattr(attention_processor, "CPU_OP_MIN_SCORES", 0 if request.param == "cpp" else 2**62)
    yield SimpleNamespace(name=request.param, calls=calls)
    if request.param != "cpp":
        assert not calls


# Scores of one query row here: batch x heads x keys x 4 bytes; 3 rows per block leaves an odd last block.
def block_bytes(batch, keys, rows=3):
    return batch * HEADS * keys * 4 * rows


@pytest.mark.parametrize("batch,tokens,text", [(2, 37, 7), (1, 25, 5), (3, 16, 77)])
@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("masked", [None, "keys", "rows"])
@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_equals_stock_processor(batch, tokens, text, cross, masked, path):
    attn = make_layer(cross)
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.standard_normal((batch, tokens, QUERY_DIM)).astype("float32"))
    context = paddle.to_tensor(rng.standard_normal((batch, text, TEXT_DIM)).astype("float32")) if cross else None
    keys = text if cross else tokens
    kwargs = {}
    if masked:  # additive bias: [B, 1, keys] as the U-Net builds it from a padding mask, or one row per query
        keep = rng.random((batch, 1 if masked == "keys" else tokens, keys)) > 0.3
        keep[..., 0] = True
        kwargs["attention_mask"] = paddle.to_tensor(np.where(keep, 0.0, -10000.0).astype("float32"))
    chunked = path.name == "blocks"
    fast = FastAttnProcessor(chunk_bytes=block_bytes(batch, keys)) if chunked else FastAttnProcessor()
    assert len(_row_blocks(tokens, block_bytes(batch, keys, 1), fast.chunk_bytes)) == \
        (-(-tokens // 3) if chunked else 1)
    for grad in (True, False):
        assert_same(run(attn, fast, x, context, grad, **kwargs), run(attn, AttnProcessor(), x, context, grad, **kwargs))
    assert bool(path.calls) == (path.name == "cpp" and not masked)


@pytest.mark.parametrize("batch,mask_rows", [(2, 2), (2, 1), (1, 1)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_emphasis_equals_formula(batch, mask_rows, masked, path):
    attn = make_layer(cross=True)
    rng = np.random.default_rng(2)
    tokens, text = 29, 9
    x = paddle.to_tensor(rng.standard_normal((batch, tokens, QUERY_DIM)).astype("float32"))
    context = paddle.to_tensor(rng.standard_normal((batch, text, TEXT_DIM)).astype("float32"))
    key_token_mask = (rng.random((mask_rows, text)) > 0.5).astype("float32")
    key_token_mask[0, 2] = 0.5  # fractional weights too
    kwargs = {"key_token_mask": key_token_mask}
    if masked:
        kwargs["attention_mask"] = paddle.to_tensor(
            np.where(rng.random((batch, 1, text)) > 0.3, 0.0, -10000.0).astype("float32"))
    fast = FastAttnProcessor(0.5, chunk_bytes=block_bytes(batch, text)) if path.name == "blocks" \
        else FastAttnProcessor(0.5)
    for grad in (True, False):
        got = run(attn, fast, x, context, grad, **kwargs)
        assert_same(got, run(attn, EmphasisReference(0.5), x, context, grad, **kwargs))
    # and the emphasis is not a no-op
    assert np.abs(got[0] - run(attn, AttnProcessor(), x, context, False)[0]).max() > 1e-3
    assert bool(path.calls) == (path.name == "cpp" and not masked)


def test_a_mask_that_needs_gradients_is_refused():
    attn = make_layer(cross=False)
    mask = paddle.zeros([2, 1, 20])
    mask.stop_gradient = False
    with pytest.raises(ValueError, match="attention_mask"):
        run(attn, FastAttnProcessor(chunk_bytes=1), paddle.randn([2, 20, QUERY_DIM]), None, attention_mask=mask)


def test_bad_chunk_bytes():  # bad w_t and masks: tests/models/test_textual_processor.py
    for bad in (0, -5, 1.5):
        with pytest.raises(ValueError, match="chunk_bytes"):
            FastAttnProcessor(chunk_bytes=bad)


def tiny_unet():
    paddle.seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 64), layers_per_block=1,
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8)


def train_losses(processor, steps=12):
    unet = tiny_unet()
    unet.set_attn_processor(processor)
    opt = paddle.optimizer.AdamW(learning_rate=3e-3, parameters=unet.parameters())
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.standard_normal((4, 4, 8, 8)).astype("float32"))
    noise = paddle.to_tensor(rng.standard_normal((4, 4, 8, 8)).astype("float32"))
    t = paddle.to_tensor([3, 300, 600, 999])
    context = paddle.to_tensor(rng.standard_normal((4, 5, 16)).astype("float32"))
    losses = []
    for _ in range(steps):
        loss = F.mse_loss(unet(x, t, context).sample, noise)
        loss.backward()
        opt.step()
        opt.clear_grad()
        losses.append(float(loss))
    return np.array(losses)


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_training_follows_the_stock_loss_curve(path):
    stock = train_losses(AttnProcessor())
    # 4 KiB blocks: the 64-token self-attention runs in 4 blocks, its backward the recomputing one.
    processor = FastAttnProcessor(chunk_bytes=4096) if path.name == "blocks" else FastAttnProcessor()
    np.testing.assert_allclose(train_losses(processor), stock, rtol=2e-4)
    assert bool(path.calls) == (path.name == "cpp")
    assert stock[-1] < 0.8 * stock[0]  # it did train


def test_apply_speedups_installs_it_in_every_expert():
    from ernie_vilg2.models.expert_bank import MixtureOfDenoisingExperts
    from ernie_vilg2.models.speedups import apply_speedups

    model = apply_speedups(MixtureOfDenoisingExperts(num_experts=2, unet=dict(
        sample_size=8, block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=1, attention_head_dim=4,
        norm_num_groups=8, cross_attention_dim=16)))
    procs = [p for e in model.experts for p in e.attn_processors.values()]
    assert procs and all(type(p) is FastAttnProcessor and p.w_t == 0.0 for p in procs)


@pytest.mark.skipif(not paddle.is_compiled_with_cuda() or paddle.device.cuda.device_count() == 0,
                    reason="needs a CUDA build of Paddle and a GPU (the fused-attention path)")
def test_gpu_fused_attention_equals_the_reference():
    previous = paddle.get_device()
    paddle.set_device("gpu")
    try:
        attn = make_layer(cross=True)
        x, context = paddle.randn([2, 37, QUERY_DIM]), paddle.randn([2, 7, TEXT_DIM])
        assert_same(run(attn, FastAttnProcessor(), x, context), run(attn, AttnProcessor(), x, context), atol=1e-4)
        kwargs = {"key_token_mask": np.eye(2, 7, dtype="float32")}
        assert_same(run(attn, FastAttnProcessor(0.5), x, context, **kwargs),
                    run(attn, EmphasisReference(0.5), x, context, **kwargs), atol=1e-4)
    finally:
        paddle.set_device(previous)


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_frozen_keys_and_values_take_no_gradient(path):
    """Cross-attention whose keys and values come from frozen layers and a frozen context (LoRA
    experts adapting only to_q): the query side trains, on every path, as with the stock processor."""
    attn = make_layer(cross=True)
    for layer in (attn.to_k, attn.to_v):
        for p in layer.parameters():
            p.stop_gradient = True
    x, context = paddle.randn([2, 37, QUERY_DIM]), paddle.randn([2, 7, TEXT_DIM])
    grads = []
    for processor in (FastAttnProcessor(chunk_bytes=block_bytes(2, 7)) if path.name == "blocks"
                      else FastAttnProcessor(), AttnProcessor()):
        attn.set_processor(processor)
        inp = x.detach()
        inp.stop_gradient = False
        (attn(inp, context) * 1.5).sum().backward()
        assert attn.to_k.weight.grad is None and attn.to_v.weight.grad is None
        grads.append((inp.grad.numpy(), attn.to_q.weight.grad.numpy()))
        attn.clear_gradients()
    for got, want in zip(*grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)
