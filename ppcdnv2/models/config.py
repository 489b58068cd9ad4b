"""Architecture configuration of the CondenseNetV2 family, and what the CondenseNet families' configs share.

Kept free of Paddle and torch so the Paddle model, the torch reference, the FLOPs counter and the
converter's architecture detection all read one description of the network.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Mapping, Tuple

STEMS = ("imagenet", "cifar")


class CondenseConfigBase:
    """What the CondenseNet families' configs share; each is a frozen dataclass deriving from this.

    Subclasses declare ``stages``, ``growth``, ``num_classes`` and ``stem`` among their fields and name
    their family in ``family_title`` (used in error messages). Frozen, hashable and equal-comparable
    come from the dataclass itself: the converter caches templates keyed on configs and compares
    configs with presets.
    """

    family_title: ClassVar[str] = "?"

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

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stages"], d["growth"] = list(self.stages), list(self.growth)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown {cls.family_title} config keys: {unknown}; known: {sorted(names)}")
        return cls(**dict(d))

    # --- reading upstream trainers' ``args`` (argparse.Namespace or dict) ---------------------
    @staticmethod
    def _args_getter(args: Any):
        return args.get if isinstance(args, Mapping) else (lambda k, default=None: getattr(args, k, default))

    @staticmethod
    def _int_tuple(value) -> Tuple[int, ...]:
        """``"4-6-8"`` (upstream's command-line form) or a sequence → a tuple of ints."""
        return tuple(int(v) for v in (value.split("-") if isinstance(value, str) else value))


def lookup_preset(presets: Mapping[str, CondenseConfigBase], name: str, title: str, **overrides):
    """``presets[name]`` (a ``converted_`` prefix is ignored), with field overrides; ``title`` names the
    family in the error."""
    base = name[len("converted_"):] if name.startswith("converted_") else name
    if base not in presets:
        raise KeyError(f"unknown {title} preset {name!r}; known: {sorted(presets)}")
    return presets[base].replace(**overrides) if overrides else presets[base]


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
PRESETS: Dict[str, CondenseNetV2Config] = {
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


def preset(name: str, **overrides) -> CondenseNetV2Config:
    """A preset by name (``cdnv2_a`` or ``converted_cdnv2_a`` alike), with field overrides."""
    return lookup_preset(PRESETS, name, CondenseNetV2Config.family_title, **overrides)
