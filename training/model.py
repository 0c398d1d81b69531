"""SimpleBaseline-style heatmap model in plain PyTorch: a small ResNet backbone and a deconvolution head.

Xiao et al., "Simple Baselines for Human Pose Estimation": a backbone down to stride 32 (or
less), transposed convolutions back up to stride 4, and a 1x1 convolution giving one heatmap per
joint. Width and depth are set by :class:`ModelConfig`; ``tiny`` is for tests, ``base`` for use.

``head="upsample"`` (the ``*-up`` configs) replaces each transposed convolution with a nearest
2x upsample and a 3x3 convolution. ONNX Runtime has no INT8 ConvTranspose kernel on CPU, so the
``deconv`` head stays in float after quantization and dominates INT8 latency; the upsample head
quantizes end to end (Resize on uint8, QLinearConv).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from posepipe.datasets.errors import PosepipeError
from posepipe.datasets.schema import NUM_JOINTS

HEATMAP_STRIDE = 4


@dataclass(frozen=True)
class ModelConfig:
    name: str
    input_size: tuple[int, int]  # (height, width) of the crop fed to the network
    stem_channels: int
    stage_channels: tuple[int, ...]
    stage_blocks: tuple[int, ...]
    deconv_channels: int
    num_joints: int = NUM_JOINTS
    head: str = "deconv"  # "deconv" (SimpleBaseline) or "upsample" (nearest 2x + 3x3 conv)

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
            stem_channels=int(d["stem_channels"]),
            stage_channels=tuple(int(v) for v in d["stage_channels"]),
            stage_blocks=tuple(int(v) for v in d["stage_blocks"]),
            deconv_channels=int(d["deconv_channels"]),
            num_joints=int(d.get("num_joints", NUM_JOINTS)),
            head=str(d.get("head", "deconv")),  # checkpoints from before the option have the deconv head
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


def build_model(config: ModelConfig | str) -> PoseNet:
    return PoseNet(get_config(config) if isinstance(config, str) else config)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
