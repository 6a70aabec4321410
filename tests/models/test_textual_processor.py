"""FastAttnProcessor: cross-attention emphasis on key-word tokens."""
import numpy as np
import paddle
import pytest
from ppdiffusers import UNet2DConditionModel
from ppdiffusers.models.attention_processor import Attention

from ernie_vilg2.models.attention_processor import FastAttnProcessor

HEADS, DIM_HEAD, QUERY_DIM, TEXT_DIM = 4, 8, 32, 24


def tiny_unet():
    paddle.seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 64), layers_per_block=1,
        cross_attention_dim=64, attention_head_dim=4, norm_num_groups=8)
    unet.eval()
    return unet


@pytest.fixture
def layer():
    paddle.seed(0)
    attn = Attention(query_dim=QUERY_DIM, cross_attention_dim=TEXT_DIM, heads=HEADS, dim_head=DIM_HEAD, bias=True)
    attn.eval()
    x = paddle.randn([2, 10, QUERY_DIM])
    text = paddle.randn([2, 6, TEXT_DIM])
    mask = np.array([[0, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0.5, 0]], dtype="float32")
    return attn, x, text, mask


def numpy_attention(attn, x, text, mask, w_t):
    """softmax(Q K^T / sqrt(d) with key columns scaled by 1 + w_t * mask) V, then the output projection."""
    def proj(linear, h):
        out = h.astype("float64") @ linear.weight.numpy().astype("float64")
        return out + linear.bias.numpy() if linear.bias is not None else out

    def heads(h):
        b, n, _ = h.shape
        return h.reshape(b, n, HEADS, DIM_HEAD).transpose(0, 2, 1, 3)

    q, k, v = heads(proj(attn.to_q, x)), heads(proj(attn.to_k, text)), heads(proj(attn.to_v, text))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(DIM_HEAD) * (1 + w_t * mask[:, None, None, :])
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = (probs @ v).transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], HEADS * DIM_HEAD)
    return proj(attn.to_out[0], out)


@pytest.mark.parametrize("w_t", [0.01, 0.5, 2.0])
def test_matches_numpy_reference(layer, w_t):
    attn, x, text, mask = layer
    attn.set_processor(FastAttnProcessor(w_t))
    out = attn(x, text, key_token_mask=paddle.to_tensor(mask)).numpy()
    ref = numpy_attention(attn, x.numpy(), text.numpy(), mask, w_t)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    # and it is not the plain attention
    assert np.abs(out - numpy_attention(attn, x.numpy(), text.numpy(), mask, 0.0)).max() > 1e-4 * w_t


def test_numpy_mask_and_shared_mask_row(layer):
    attn, x, text, mask = layer
    attn.set_processor(FastAttnProcessor(0.5))
    a = attn(x, text, key_token_mask=mask).numpy()
    np.testing.assert_allclose(a, numpy_attention(attn, x.numpy(), text.numpy(), mask, 0.5), atol=1e-5)
    one = attn(x, text, key_token_mask=mask[:1]).numpy()  # batch 1 broadcasts
    np.testing.assert_allclose(one, numpy_attention(attn, x.numpy(), text.numpy(), mask[[0, 0]], 0.5), atol=1e-5)


def test_inactive_emphasis_is_the_default_processor_bit_for_bit(layer):
    # Without emphasis the processor takes the default path (q scaled), which equals PPDiffusers'
    # AttnProcessor within float tolerance (tests/test_attention_speed.py); emphasis scales the keys
    # instead, so taking that path by mistake changes the rounding and fails here.
    attn, x, text, mask = layer
    attn.set_processor(FastAttnProcessor())  # what the project's U-Nets carry
    default_cross = attn(x, text).numpy()
    for processor, kwargs in [(FastAttnProcessor(0.0), {"key_token_mask": paddle.to_tensor(mask)}),
                              (FastAttnProcessor(0.3), {}),
                              (FastAttnProcessor(0.3), {"key_token_mask": None})]:
        attn.set_processor(processor)
        np.testing.assert_array_equal(attn(x, text, **kwargs).numpy(), default_cross)
    # self-attention ignores the mask (its keys are image tokens)
    attn_self = Attention(query_dim=QUERY_DIM, heads=HEADS, dim_head=DIM_HEAD)
    attn_self.set_processor(FastAttnProcessor())
    ref = attn_self(x).numpy()
    attn_self.set_processor(FastAttnProcessor(0.3))
    np.testing.assert_array_equal(attn_self(x, key_token_mask=paddle.to_tensor(mask)).numpy(), ref)


def test_bad_arguments(layer):
    attn, x, text, mask = layer
    for bad in (-0.1, float("nan"), "1"):
        with pytest.raises(ValueError, match="w_t"):
            FastAttnProcessor(bad)
    attn.set_processor(FastAttnProcessor(0.1))
    with pytest.raises(ValueError, match=r"key_token_mask: expected shape \[2 or 1, 6\]"):
        attn(x, text, key_token_mask=paddle.ones([2, 5]))
    with pytest.raises(ValueError, match="key_token_mask"):
        attn(x, text, key_token_mask=paddle.ones([3, 6]))
    with pytest.raises(TypeError):
        attn(x, text, key_token_mask=[[1.0] * 6] * 2)


def test_through_unet_cross_attention_kwargs():
    unet = tiny_unet()
    x = paddle.randn([2, 4, 8, 8])
    t = paddle.to_tensor([10, 500])
    text = paddle.randn([2, 7, 64])
    mask = paddle.to_tensor(np.array([[0, 1, 0, 0, 1, 0, 0], [0, 0, 1, 1, 0, 0, 0]], dtype="float32"))
    with paddle.no_grad():
        stock = unet(x, t, encoder_hidden_states=text).sample.numpy()
        unet.set_attn_processor(FastAttnProcessor(0.0))
        off = unet(x, t, encoder_hidden_states=text, cross_attention_kwargs={"key_token_mask": mask}).sample.numpy()
        unet.set_attn_processor(FastAttnProcessor(0.5))
        on = unet(x, t, encoder_hidden_states=text, cross_attention_kwargs={"key_token_mask": mask}).sample.numpy()
        zero = unet(x, t, encoder_hidden_states=text,
                    cross_attention_kwargs={"key_token_mask": paddle.zeros([2, 7])}).sample.numpy()
    np.testing.assert_allclose(off, stock, atol=1e-5)  # the stock function, q scaled first
    assert np.abs(on - stock).max() > 1e-3  # the mask reached the cross-attention layers
    np.testing.assert_allclose(zero, stock, atol=1e-5)  # mask 0 = no emphasis (different op order)
    assert all(isinstance(p, FastAttnProcessor) for p in unet.attn_processors.values())


def test_gradients_flow_through_the_emphasis(layer):
    attn, x, text, mask = layer
    attn.train()
    attn.set_processor(FastAttnProcessor(0.5))
    text.stop_gradient = False
    attn(x, text, key_token_mask=paddle.to_tensor(mask)).sum().backward()
    assert attn.to_k.weight.grad is not None and float(attn.to_k.weight.grad.abs().sum()) > 0
    assert text.grad is not None
