"""SimpleBaseline-style heatmap model in plain PyTorch: a small ResNet backbone and a deconvolution head.

Xiao et al., "Simple Baselines for Human Pose Estimation": a backbone down to stride 32 (or
less), transposed convolutions back up to stride 4, and a 1x1 convolution giving one heatmap per
joint. Width and depth are set by :class:`ModelConfig`; ``tiny`` is for tests, ``base`` for use.

``arch="movenet"`` is a pretrained MoveNet's network (``posepipe.pretrained``: MobileNetV2-FPN, four
stride-4 heads, decoded to keypoints by ``models.movenet``), whose layer spec travels in the
config, so a checkpoint is a whole model; ``posepipe train --init movenet-thunder`` starts there.

``head="upsample"`` (the ``*-up`` configs) replaces each transposed convolution with a nearest
2x upsample and a 3x3 convolution. ONNX Runtime has no INT8 ConvTranspose kernel on CPU, so the
``deconv`` head stays in float after quantization and dominates INT8 latency; the upsample head
quantizes end to end (Resize on uint8, QLinearConv).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.schema import NUM_JOINTS

HEATMAP_STRIDE = 4


ARCHS = ("simplebaseline", "movenet")


@dataclass(frozen=True)
class ModelConfig:
    name: str
    input_size: tuple[int, int]  # (height, width) of the crop fed to the network
    stem_channels: int = 0
    stage_channels: tuple[int, ...] = ()
    stage_blocks: tuple[int, ...] = ()
    deconv_channels: int = 0
    num_joints: int = NUM_JOINTS
    head: str = "deconv"  # "deconv" (SimpleBaseline) or "upsample" (nearest 2x + 3x3 conv)
    arch: str = "simplebaseline"  # or "movenet": ``graph`` holds the network's layer spec
    graph: dict | None = field(default=None, compare=False, hash=False)
    init: dict | None = field(default=None, compare=False, hash=False)  # where the starting weights came from

    @property
    def output(self) -> str:
        """What the model's inference form outputs (``models.onnx_io``): heatmaps or keypoints."""
        return "keypoints" if self.arch == "movenet" else "heatmaps"

    @property
    def backbone_stride(self) -> int:
        return 2 ** (1 + len(self.stage_channels))  # stem /2, every stage /2

    @property
    def num_deconv(self) -> int:
        return int(math.log2(self.backbone_stride // HEATMAP_STRIDE))

    @property
    def heatmap_size(self) -> tuple[int, int]:
        h, w = self.input_size
        return h // HEATMAP_STRIDE, w // HEATMAP_STRIDE

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls(
            name=str(d["name"]),
            input_size=tuple(int(v) for v in d["input_size"]),
            stem_channels=int(d.get("stem_channels", 0)),
            stage_channels=tuple(int(v) for v in d.get("stage_channels", ())),
            stage_blocks=tuple(int(v) for v in d.get("stage_blocks", ())),
            deconv_channels=int(d.get("deconv_channels", 0)),
            num_joints=int(d.get("num_joints", NUM_JOINTS)),
            head=str(d.get("head", "deconv")),  # checkpoints from before the option have the deconv head
            arch=str(d.get("arch", "simplebaseline")),
            graph=d.get("graph"),
            init=d.get("init"),
        )


CONFIGS: dict[str, ModelConfig] = {
    # ~100k parameters, 64x48 crops -> 16x12 heatmaps: trains in seconds on a CPU.
    "tiny": ModelConfig("tiny", (64, 48), 16, (24, 32, 48), (1, 1, 1), 32),
    # ResNet-18 layout at half width, 256x192 crops -> 64x48 heatmaps (SimpleBaseline's setting).
    "base": ModelConfig("base", (256, 192), 32, (32, 64, 128, 256), (2, 2, 2, 2), 128),
    # The same backbones with the upsample head, which quantizes to INT8 end to end. tiny-up's head
    # is a little wider so it keeps tiny's ~100k parameters (3x3 kernels have fewer than 4x4 ones).
    "tiny-up": ModelConfig("tiny-up", (64, 48), 16, (24, 32, 48), (1, 1, 1), 44, head="upsample"),
    "base-up": ModelConfig("base-up", (256, 192), 32, (32, 64, 128, 256), (2, 2, 2, 2), 128, head="upsample"),
}
HEADS = ("deconv", "upsample")


def get_config(name: str) -> ModelConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise PosepipeError(f"unknown model {name!r}; known: {', '.join(CONFIGS)}") from None


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class PoseNet(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config.stem_channels
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        stages = []
        for channels, blocks in zip(config.stage_channels, config.stage_blocks):
            layers = [BasicBlock(c, channels, 2)] + [BasicBlock(channels, channels, 1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            c = channels
        self.backbone = nn.Sequential(*stages)
        if config.head not in HEADS:
            raise PosepipeError(f"unknown model head {config.head!r}; known: {', '.join(HEADS)}")
        head = []
        for _ in range(config.num_deconv):
            if config.head == "deconv":
                up = [nn.ConvTranspose2d(c, config.deconv_channels, 4, 2, 1, bias=False)]
            else:
                up = [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, config.deconv_channels, 3, 1, 1, bias=False)]
            head += [*up, nn.BatchNorm2d(config.deconv_channels), nn.ReLU(inplace=True)]
            c = config.deconv_channels
        self.head = nn.Sequential(*head)
        self.final = nn.Conv2d(c, config.num_joints, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # The output starts near zero, as the targets mostly are.
        nn.init.normal_(self.final.weight, std=0.001)
        nn.init.zeros_(self.final.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.head(self.backbone(self.stem(x))))


def build_model(config: ModelConfig | str) -> nn.Module:
    """The training form: PoseNet (heatmaps out), or a MoveNet network (its four heads, by name, out)."""
    config = get_config(config) if isinstance(config, str) else config
    if config.arch == "movenet":
        from posepipe.pretrained.movenet import Heads

        if not config.graph:
            raise PosepipeError(f"model {config.name!r}: a movenet config needs its layer spec ('graph')")
        return Heads(config.graph, config.input_size)
    if config.arch not in ARCHS:
        raise PosepipeError(f"model {config.name!r}: unknown architecture {config.arch!r}; known: {', '.join(ARCHS)}")
    return PoseNet(config)


def inference_module(model: nn.Module) -> nn.Module:
    """The form that evaluation and export run: heatmaps for PoseNet, decoded keypoints for MoveNet."""
    from posepipe.pretrained.movenet import Heads, SinglePose

    if isinstance(model, Heads):
        return SinglePose(model.net, model.input_size)
    return model


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
