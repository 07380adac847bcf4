"""A UNet of SyncTalk_2D's size and structure with random weights, for benchmarks.

The graph follows the "328" UNet of SyncTalk_2D in "ave" mode: MobileNetV2-style inverted
residual blocks (1x1 expand, 3x3 depthwise, 1x1 project, expand ratio 2) in an encoder of five
stride-2 stages from 320x320 down to 10x10 with channels 32-64-128-256-512, an audio branch
from [B, 32, 16, 16] to [B, 512, 10, 10], a fusion of both, and five bilinear-upsampling
decoder stages with skip connections to a sigmoid output [B, 3, 320, 320]. Batch norms are
folded into the convolutions, as an inference export would have them. The weights are random
(seeded), so the output is not a face: the model exists to time real-sized inference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET_VERSION = 17
IR_VERSION = 8
CHANNELS = (32, 64, 128, 256, 512)
EXPAND_RATIO = 2


class _GraphBuilder:
    """Accumulates nodes and initializers, naming each tensor uniquely."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.parameters = 0
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def _weight(self, shape: tuple[int, ...], fan_in: int) -> str:
        name = self._name("w")
        values = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape).astype(np.float32)
        self.initializers.append(numpy_helper.from_array(values, name=name))
        self.parameters += values.size
        return name

    def conv(
        self,
        x: str,
        c_in: int,
        c_out: int,
        *,
        kernel: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        relu: bool = False,
    ) -> str:
        """Convolution with bias (a folded batch norm), optionally followed by ReLU."""
        weight = self._weight((c_out, c_in // groups, kernel, kernel), c_in // groups * kernel**2)
        bias = self._name("b")
        # A small positive bias keeps activations out of the denormal range, where CPU float
        # arithmetic is many times slower; with zero biases the random weights drift there.
        self.initializers.append(
            numpy_helper.from_array(np.full(c_out, 0.01, np.float32), name=bias)
        )
        self.parameters += c_out
        out = self._name("conv")
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, weight, bias],
                [out],
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[padding] * 4,
                group=groups,
            )
        )
        if not relu:
            return out
        activated = self._name("relu")
        self.nodes.append(helper.make_node("Relu", [out], [activated]))
        return activated

    def inverted_residual(
        self, x: str, c_in: int, c_out: int, *, stride: int, residual: bool
    ) -> str:
        hidden = c_in * EXPAND_RATIO
        y = self.conv(x, c_in, hidden, relu=True)
        y = self.conv(
            y, hidden, hidden, kernel=3, stride=stride, padding=1, groups=hidden, relu=True
        )
        y = self.conv(y, hidden, c_out)
        if not residual:
            return y
        out = self._name("add")
        self.nodes.append(helper.make_node("Add", [x, y], [out]))
        return out

    def double_conv(self, x: str, c_in: int, c_out: int, *, stride: int) -> str:
        y = self.inverted_residual(x, c_in, c_out, stride=stride, residual=False)
        return self.inverted_residual(y, c_out, c_out, stride=1, residual=True)

    def concat(self, a: str, b: str) -> str:
        out = self._name("cat")
        self.nodes.append(helper.make_node("Concat", [a, b], [out], axis=1))
        return out

    def upsample(self, x: str) -> str:
        """Bilinear 2x upsampling with aligned corners (PyTorch's align_corners=True)."""
        scales = self._name("scales")
        self.initializers.append(
            numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), name=scales)
        )
        out = self._name("up")
        self.nodes.append(
            helper.make_node(
                "Resize",
                [x, "", scales],
                [out],
                mode="linear",
                coordinate_transformation_mode="align_corners",
            )
        )
        return out

    def up(self, x: str, skip: str, c_in: int, c_out: int) -> str:
        return self.double_conv(self.concat(self.upsample(x), skip), c_in, c_out, stride=1)


def build_synctalk_unet(path: Path, *, seed: int = 0) -> Path:
    """Write the benchmark UNet ONNX (inputs input [B,6,320,320], audio [B,32,16,16])."""
    ch = CHANNELS
    g = _GraphBuilder(seed)

    x1 = g.inverted_residual("input", 6, ch[0], stride=1, residual=False)
    x2 = g.double_conv(x1, ch[0], ch[0], stride=2)
    x3 = g.double_conv(x2, ch[0], ch[1], stride=2)
    x4 = g.double_conv(x3, ch[1], ch[2], stride=2)
    x5 = g.double_conv(x4, ch[2], ch[3], stride=2)
    x6 = g.double_conv(x5, ch[3], ch[4], stride=2)

    a = g.inverted_residual("audio", ch[0], ch[1], stride=1, residual=False)
    a = g.inverted_residual(a, ch[1], ch[2], stride=1, residual=False)
    a = g.conv(a, ch[2], ch[3], kernel=3, padding=1, relu=True)
    a = g.inverted_residual(a, ch[3], ch[3], stride=1, residual=True)
    a = g.conv(a, ch[3], ch[4], kernel=3, stride=2, padding=3, relu=True)
    a = g.inverted_residual(a, ch[4], ch[4], stride=1, residual=True)
    a = g.inverted_residual(a, ch[4], ch[4], stride=1, residual=True)

    fused = g.double_conv(g.concat(x6, a), ch[4] * 2, ch[4], stride=1)
    fused = g.double_conv(fused, ch[4], ch[3], stride=1)

    y = g.up(fused, x5, ch[4], ch[3] // 2)
    y = g.up(y, x4, ch[3], ch[2] // 2)
    y = g.up(y, x3, ch[2], ch[1] // 2)
    y = g.up(y, x2, ch[1], ch[0])
    y = g.up(y, x1, ch[1], ch[0] // 2)
    logits = g.conv(y, ch[0] // 2, 3)
    g.nodes.append(helper.make_node("Sigmoid", [logits], ["output"]))

    graph = helper.make_graph(
        g.nodes,
        "synctalk_unet_328_random",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 6, 320, 320]),
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", 32, 16, 16]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, 320, 320])],
        g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET_VERSION)],
        producer_name="lipsync-serving",
        doc_string=f"Random-weight UNet of SyncTalk_2D's 328 structure, {g.parameters} parameters",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
