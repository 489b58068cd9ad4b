"""Architecture configurations of CondenseNetV2 and CondenseNet (V1), and what they share.

Kept free of Paddle and torch so the Paddle model, the torch reference, the FLOPs counter and the
converter's architecture detection all read one description of the network.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Mapping, Tuple

from ...configs import ConfigBase

STEMS = ("imagenet", "cifar")


class CondenseConfigBase(ConfigBase):
    """What the CondenseNet families' configs share; each is a frozen dataclass deriving from this.

    Subclasses declare ``stages``, ``growth``, ``num_classes`` and ``stem`` among their fields and name
    their family in ``family_title`` (used in error messages). Frozen, hashable and equal-comparable
    come from the dataclass itself: the converter caches templates keyed on configs and compares
    configs with presets.
    """

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(int(s) for s in self.stages))
        object.__setattr__(self, "growth", tuple(int(g) for g in self.growth))
        if len(self.stages) != len(self.growth) or not self.stages:
            raise ValueError(f"stages {self.stages} and growth {self.growth} must be non-empty and of equal length")
        if self.stem not in STEMS:
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {self.stem!r}")

    @property
    def init_stride(self) -> int:
        return 2 if self.stem == "imagenet" else 1

    @property
    def pool_size(self) -> int:
        return 7 if self.stem == "imagenet" else 8

    @property
    def input_size(self) -> int:
        return 224 if self.stem == "imagenet" else 32

    @property
    def num_features(self) -> int:
        """Channels after the last dense block (input of the head)."""
        return 2 * self.growth[0] + sum(s * g for s, g in zip(self.stages, self.growth))

    # --- reading upstream trainers' ``args`` (argparse.Namespace or dict) ---------------------
    @staticmethod
    def _args_getter(args: Any):
        return args.get if isinstance(args, Mapping) else (lambda k, default=None: getattr(args, k, default))

    @staticmethod
    def _int_tuple(value) -> Tuple[int, ...]:
        """``"4-6-8"`` (upstream's command-line form) or a sequence → a tuple of ints."""
        return tuple(int(v) for v in (value.split("-") if isinstance(value, str) else value))


@dataclass(frozen=True)
class CondenseNetV2Config(CondenseConfigBase):
    """Hyper-parameters of a CondenseNetV2; field meanings follow the official ``args`` names."""

    family_title: ClassVar[str] = "CondenseNetV2"

    stages: Tuple[int, ...] = (1, 1, 4, 6, 8)
    growth: Tuple[int, ...] = (8, 8, 16, 32, 64)
    bottleneck: int = 4
    condense_factor: int = 8  # LGC keeps 1/condense_factor of its input connections
    trans_factor: int = 8  # SFR keeps 1/trans_factor of its output connections
    group_1x1: int = 8
    group_3x3: int = 8
    group_trans: int = 8
    last_se_reduction: int = 16
    hs_start_block: int = 2  # blocks with index >= this use hard-swish instead of ReLU
    se_start_block: int = 3  # blocks with index >= this put an SE layer before the SFR
    fc_channel: int = 828
    num_classes: int = 1000
    stem: str = "imagenet"  # "imagenet": stride-2 stem, 7x7 final pool; "cifar": stride 1, 8x8 pool

    @classmethod
    def from_official_args(cls, args: Any) -> "CondenseNetV2Config":
        """Build from the official ``argparse.Namespace`` (or a dict of it) saved in trainer checkpoints."""
        get = cls._args_getter(args)
        dataset = get("dataset", "imagenet")
        return cls(
            stages=cls._int_tuple(get("stages")), growth=cls._int_tuple(get("growth")), bottleneck=get("bottleneck"),
            condense_factor=get("condense_factor"), trans_factor=get("trans_factor"),
            group_1x1=get("group_1x1"), group_3x3=get("group_3x3"), group_trans=get("group_trans"),
            last_se_reduction=get("last_se_reduction"), hs_start_block=get("HS_start_block"),
            se_start_block=get("SE_start_block"), fc_channel=get("fc_channel"),
            num_classes=get("num_classes", 1000),
            stem="cifar" if str(dataset).startswith("cifar") else "imagenet",
        )


# The official presets (model/condensenetv2.py of jianghaojun/CondenseNetV2), ImageNet, 1000 classes.
V2_PRESETS: Dict[str, CondenseNetV2Config] = {
    "cdnv2_a": CondenseNetV2Config(
        stages=(1, 1, 4, 6, 8), growth=(8, 8, 16, 32, 64), condense_factor=8, trans_factor=8,
        group_1x1=8, group_3x3=8, group_trans=8, fc_channel=828),
    "cdnv2_b": CondenseNetV2Config(
        stages=(2, 4, 6, 8, 6), growth=(6, 12, 24, 48, 96), condense_factor=6, trans_factor=6,
        group_1x1=6, group_3x3=6, group_trans=6, fc_channel=1024),
    "cdnv2_c": CondenseNetV2Config(
        stages=(4, 6, 8, 10, 8), growth=(8, 16, 32, 64, 128), condense_factor=8, trans_factor=8,
        group_1x1=8, group_3x3=8, group_trans=8, fc_channel=1024),
}


@dataclass(frozen=True)
class CondenseNetConfig(CondenseConfigBase):
    """Hyper-parameters of a CondenseNet (V1); field names follow upstream's ``main.py`` arguments.

    Geometry (``init_stride``, ``pool_size``, ``input_size``, ``num_features``), ``replace``,
    ``to_dict``/``from_dict`` and the stages/growth/stem checks are shared with V2 (``CondenseConfigBase``).
    """

    family_title: ClassVar[str] = "CondenseNet"

    stages: Tuple[int, ...] = (4, 6, 8, 10, 8)
    growth: Tuple[int, ...] = (8, 16, 32, 64, 128)
    bottleneck: int = 4
    group_1x1: int = 4
    group_3x3: int = 4
    condense_factor: int = 4  # LGC keeps 1/condense_factor of its input connections per group
    dropout_rate: float = 0.0  # dropout before each LGC convolution (training form only)
    classifier_keep: float = 0.5  # fraction of features the condensed classifier keeps (upstream: 0.5)
    num_classes: int = 1000
    stem: str = "imagenet"  # "imagenet": stride-2 stem, 7x7 final pool; "cifar": stride 1, 8x8 pool

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.classifier_keep <= 1.0:
            raise ValueError(f"classifier_keep must be in (0, 1], got {self.classifier_keep}")

    @property
    def classifier_features(self) -> int:
        """Input features the condensed classifier keeps (upstream: ``int(in_features * 0.5)``)."""
        return int(self.num_features * self.classifier_keep)

    @classmethod
    def from_official_args(cls, args: Any) -> "CondenseNetConfig":
        """Build from upstream's ``argparse.Namespace`` (or a dict of it): ``data``, ``stages``, ``growth``, ..."""
        get = cls._args_getter(args)
        data = str(get("data", "imagenet"))
        group_1x1 = get("group_1x1", 4)
        default_classes = {"cifar10": 10, "cifar100": 100}.get(data, 1000)
        return cls(stages=cls._int_tuple(get("stages")), growth=cls._int_tuple(get("growth")),
                   bottleneck=get("bottleneck", 4), group_1x1=group_1x1, group_3x3=get("group_3x3", 4),
                   condense_factor=get("condense_factor") or group_1x1,
                   dropout_rate=float(get("dropout_rate", 0.0) or 0.0),
                   num_classes=get("num_classes", default_classes),
                   stem="cifar" if data in ("cifar10", "cifar100") else "imagenet")


def _cifar(n: int, growth=(8, 16, 32)) -> CondenseNetConfig:
    return CondenseNetConfig(stages=(n, n, n), growth=growth, num_classes=10, stem="cifar")


# The published models: ImageNet CondenseNet-74 (upstream README/script.sh) and the CIFAR table of the
# paper (depth = 6 N + 2; CIFAR-10 heads, pass num_classes=100 for CIFAR-100).
V1_PRESETS: Dict[str, CondenseNetConfig] = {
    "condensenet74_c4_g4": CondenseNetConfig(),
    "condensenet74_c8_g8": CondenseNetConfig(group_1x1=8, group_3x3=8, condense_factor=8),
    **{f"condensenet_cifar{d}": _cifar((d - 2) // 6) for d in (50, 74, 86, 98, 110, 122)},
    "condensenet_cifar182": _cifar(30, growth=(12, 24, 48)),
}
