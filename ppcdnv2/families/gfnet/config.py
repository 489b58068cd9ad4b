"""GFNet configuration, framework-free (no paddle, no torch).

One :class:`GFNetConfig` describes one released Glance-and-Focus network of blackfeather-wang/GFNet-Pytorch:
which backbone encodes the glance and the patches, the patch size ``P`` (also the glance size), the
sequence length ``T``, the input side ``W``, the glance interpolation, and the shapes of the recurrent
classifier (``Full_layer``) and the patch policy (``ActorCritic``). The values of the 14 released
configurations (:data:`PRESETS`, keyed like the fixtures: ``<model_name>_p<P>_t<T>``) are upstream's
``configs.py`` entries plus the patch size and length of each published checkpoint.

Derived quantities, as upstream computes them:

* ``fmap_side`` = ``ceil(P / 32)``: the side of the backbone's last feature map on a ``P x P`` input;
* ``state_dim`` = ``fmap_channels * fmap_side ** 2``: the policy's flattened state (``inference.py``);
  ``None`` is resolved to it, any other value must equal it;
* the conv policy encoder's Linear reads ``32 * fmap_side ** 2`` values (upstream writes it as
  ``int(state_dim * 32 / feature_dim)``).

``step0`` says which module turns the glance features into the step-0 prediction: ``"fc"`` = GFNet's own
recurrent classifier (ResNet, DenseNet), ``"backbone"`` = the backbone's classifier head
(``model_prime.fc`` for RegNet, whose GRU still runs at step 0 to set its hidden state;
``model_prime.classifier`` for MobileNetV3 / EfficientNet, whose cascade only stores the glance features).
"""
from __future__ import annotations

from dataclasses import dataclass
from math import ceil
from typing import Any, ClassVar, Dict, Mapping, Optional

from ...configs import ConfigBase

__all__ = ["GFNetConfig", "PRESETS", "RELEASED", "INTERPOLATIONS", "STEP0_SOURCES", "CASCADE_MAX_STEPS", "N_BUDGETS"]

INTERPOLATIONS = ("bilinear", "bicubic")
STEP0_SOURCES = ("fc", "backbone")
CASCADE_MAX_STEPS = 5  # upstream's cascade classifier has fc_2 .. fc_5
N_BUDGETS = 39  # inference.main(): p = 1 .. 39


@dataclass(frozen=True)
class GFNetConfig(ConfigBase):
    """Everything that fixes the shapes and the inference arithmetic of one GFNet.

    ``fc_hidden`` is the GRU width of the recurrent classifier (upstream ``fc_hidden_dim``); ``None`` for
    the cascade classifier (``fc_rnn=False``), which has no hidden layer. ``crop_pct`` and
    ``dataset_interpolation`` are upstream's evaluation preprocessing (resize to ``W / crop_pct``, centre
    crop ``W``); the network itself does not read them.
    """

    backbone: str = "resnet50"
    patch_size: int = 96
    T: int = 5
    image_size: int = 224
    prime_interpolation: str = "bicubic"
    feature_num: int = 2048
    fmap_channels: int = 2048
    fc_rnn: bool = True
    fc_hidden: Optional[int] = 1024
    policy_conv: bool = False
    policy_hidden_dim: int = 1024
    state_dim: Optional[int] = None
    step0: str = "fc"
    num_classes: int = 1000
    crop_pct: float = 0.875
    dataset_interpolation: str = "bilinear"
    # CondenseNetV2 backbones only: fields changed from the cdnv2_* preset (e.g. a small one for a demo);
    # feature_num and fmap_channels then follow from it
    backbone_arch: Optional[Mapping[str, Any]] = None

    family_title: ClassVar[str] = "GFNet"

    def __post_init__(self) -> None:
        self._resolve_backbone_arch()
        for name in ("patch_size", "T", "image_size", "feature_num", "fmap_channels", "policy_hidden_dim",
                     "num_classes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.patch_size > self.image_size:
            raise ValueError(f"patch_size ({self.patch_size}) must not exceed image_size ({self.image_size})")
        if self.T < 1:
            raise ValueError(f"T must be >= 1, got {self.T}")
        for name in ("prime_interpolation", "dataset_interpolation"):
            if getattr(self, name) not in INTERPOLATIONS:
                raise ValueError(f"{name} must be one of {INTERPOLATIONS}, got {getattr(self, name)!r}")
        if self.step0 not in STEP0_SOURCES:
            raise ValueError(f"step0 must be one of {STEP0_SOURCES}, got {self.step0!r}")
        if self.fc_rnn:
            if isinstance(self.fc_hidden, bool) or not isinstance(self.fc_hidden, int) or self.fc_hidden < 1:
                raise ValueError(f"the GRU classifier (fc_rnn=True) needs fc_hidden >= 1, got {self.fc_hidden!r}")
        else:
            if self.step0 != "backbone":
                raise ValueError("the cascade classifier (fc_rnn=False) gives no step-0 prediction; "
                                 "step0 must be 'backbone'")
            if self.T > CASCADE_MAX_STEPS:
                raise ValueError(f"the cascade classifier has fc_2..fc_{CASCADE_MAX_STEPS}: T must be <= "
                                 f"{CASCADE_MAX_STEPS}, got {self.T}")
        expected = self.fmap_channels * self.fmap_side ** 2
        if self.state_dim is None:
            object.__setattr__(self, "state_dim", expected)
        elif self.state_dim != expected:
            raise ValueError(f"state_dim must be fmap_channels * ceil(P/32)^2 = {expected}, got {self.state_dim}")
        if not 0.0 < float(self.crop_pct) <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    def _resolve_backbone_arch(self) -> None:
        """``backbone_arch`` kept hashable (sorted pairs, lists as tuples); for a CondenseNetV2 backbone the
        widths are derived from its configuration, so a changed architecture cannot disagree with them."""
        arch = self.backbone_arch
        if arch is not None and not isinstance(arch, tuple):
            if not isinstance(arch, Mapping):
                raise ValueError(f"backbone_arch must be a mapping of CondenseNetV2 fields, got {arch!r}")
            arch = tuple(sorted((str(k), tuple(v) if isinstance(v, list) else v) for k, v in arch.items()))
            object.__setattr__(self, "backbone_arch", arch or None)
        if not self.backbone.startswith("cdnv2_"):
            if self.backbone_arch:
                raise ValueError(f"backbone_arch is for the CondenseNetV2 backbones, not {self.backbone!r}")
            return
        from ..condensenet.config import V2_PRESETS

        if self.backbone not in V2_PRESETS:
            raise ValueError(f"unknown CondenseNetV2 backbone {self.backbone!r}; known: {', '.join(V2_PRESETS)}")
        if self.patch_size % 32:  # its 2x2 average-pool transitions floor: ceil(P / 32) only when P divides
            raise ValueError(f"a CondenseNetV2 encoder needs a patch size divisible by 32, got {self.patch_size}")
        cdnv2 = self.backbone_config()
        stride = cdnv2.init_stride * 2 ** (len(cdnv2.stages) - 1)  # stem, then a 2x2 pool between blocks
        if stride != 32:  # the policy and the state size read a ceil(P / 32)-sided map
            raise ValueError(f"a GFNet encoder must downsample by 32, but backbone_arch gives {stride} (stem "
                             f"{cdnv2.stem!r}, {len(cdnv2.stages)} dense blocks): use stem 'imagenet' and 5 blocks")
        object.__setattr__(self, "feature_num", cdnv2.fc_channel)
        object.__setattr__(self, "fmap_channels", cdnv2.num_features)

    def backbone_config(self):
        """The CondenseNetV2 configuration of a ``cdnv2_*`` backbone (its preset with ``backbone_arch``)."""
        from ..condensenet.config import V2_PRESETS

        return V2_PRESETS[self.backbone].replace(num_classes=self.num_classes, **dict(self.backbone_arch or ()))

    def to_dict(self) -> Dict[str, Any]:
        d = super().to_dict()
        if self.backbone_arch is not None:
            d["backbone_arch"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.backbone_arch}
        return d

    # -- derived ----------------------------------------------------------------------------------
    @property
    def fmap_side(self) -> int:
        """Side of the backbone's last feature map on a P x P input (stride 32, ceil)."""
        return ceil(self.patch_size / 32)

    @property
    def policy_encoder_in(self) -> int:
        """Input width of the policy encoder's Linear (after the 1x1 conv to 32 channels, or the raw map)."""
        return 32 * self.fmap_side ** 2 if self.policy_conv else self.state_dim

    @property
    def name(self) -> str:
        """``<backbone>_p<P>_t<T>`` (the fixtures' and the presets' key)."""
        return f"{self.backbone}_p{self.patch_size}_t{self.T}"

    @property
    def input_size(self) -> int:
        """The input side ``W`` (the registry's name for it)."""
        return self.image_size

    @property
    def resize_size(self) -> int:
        """Evaluation resize (shorter side) before the centre crop, as upstream: ``int(W / crop_pct)``."""
        return int(self.image_size / self.crop_pct)

    # -- dict round trip (the rest: ConfigBase) ------------------------------------------------------
    def replace(self, **kw: Any) -> "GFNetConfig":
        """A copy with some fields changed (validated like a new config); ``state_dim`` is re-derived
        unless given."""
        kw.setdefault("state_dim", None)
        return super().replace(**kw)


# -- presets ----------------------------------------------------------------------------------------
# upstream configs.py, per backbone: feature_num, feature_map_channels, policy_conv, policy_hidden_dim,
# fc_rnn, fc_hidden_dim, image_size, crop_pct, dataset_interpolation, prime_interpolation; plus the
# step-0 source of inference.generate_logits.
_BACKBONES: Dict[str, Dict[str, Any]] = {
    "resnet50": dict(feature_num=2048, fmap_channels=2048, policy_conv=False, policy_hidden_dim=1024,
                     fc_rnn=True, fc_hidden=1024, image_size=224, crop_pct=0.875,
                     dataset_interpolation="bilinear", prime_interpolation="bicubic", step0="fc"),
    **{name: dict(feature_num=f, fmap_channels=f, policy_conv=False, policy_hidden_dim=1024, fc_rnn=True,
                  fc_hidden=1024, image_size=224, crop_pct=0.875, dataset_interpolation="bilinear",
                  prime_interpolation="bilinear", step0="fc")
       for name, f in (("densenet121", 1024), ("densenet169", 1664), ("densenet201", 1920))},
    **{name: dict(feature_num=f, fmap_channels=f, policy_conv=True, policy_hidden_dim=256, fc_rnn=True,
                  fc_hidden=1024, image_size=224, crop_pct=0.875, dataset_interpolation="bilinear",
                  prime_interpolation="bilinear", step0="backbone")
       for name, f in (("regnety_600m", 608), ("regnety_800m", 768), ("regnety_1.6g", 888))},
    **{name: dict(feature_num=1280, fmap_channels=c, policy_conv=True, policy_hidden_dim=256, fc_rnn=False,
                  fc_hidden=None, image_size=224, crop_pct=0.875, dataset_interpolation="bilinear",
                  prime_interpolation="bicubic", step0="backbone")
       for name, c in (("mobilenetv3_large_100", 960), ("mobilenetv3_large_125", 1200))},
    "efficientnet_b2": dict(feature_num=1408, fmap_channels=1408, policy_conv=True, policy_hidden_dim=256,
                            fc_rnn=False, fc_hidden=None, image_size=260, crop_pct=0.875,
                            dataset_interpolation="bicubic", prime_interpolation="bicubic", step0="backbone"),
    "efficientnet_b3": dict(feature_num=1536, fmap_channels=1536, policy_conv=True, policy_hidden_dim=256,
                            fc_rnn=False, fc_hidden=None, image_size=300, crop_pct=0.904,
                            dataset_interpolation="bicubic", prime_interpolation="bicubic", step0="backbone"),
    # new (no upstream counterpart): CondenseNetV2 A/B/C, set up as GFNet sets up MobileNetV3 (conv policy,
    # H = 256, cascade classifier, step 0 from the backbone's classifier); the evaluation preprocessing of
    # CondenseNetV2's own weights (bicubic for A/B, bilinear for C)
    **{name: dict(feature_num=f, fmap_channels=c, policy_conv=True, policy_hidden_dim=256, fc_rnn=False,
                  fc_hidden=None, image_size=224, crop_pct=0.875, dataset_interpolation=interp,
                  prime_interpolation="bicubic", step0="backbone")
       for name, f, c, interp in (("cdnv2_a", 828, 800, "bicubic"), ("cdnv2_b", 1024, 1176, "bicubic"),
                                  ("cdnv2_c", 1024, 2064, "bilinear"))},
}

# the released checkpoints: (backbone, P, T)
_RELEASED = (
    ("resnet50", 96, 5), ("resnet50", 128, 5),
    ("densenet121", 96, 5), ("densenet169", 96, 5), ("densenet201", 96, 5),
    ("regnety_600m", 96, 5), ("regnety_800m", 96, 5), ("regnety_1.6g", 96, 5),
    ("mobilenetv3_large_100", 96, 3), ("mobilenetv3_large_100", 128, 3), ("mobilenetv3_large_125", 128, 3),
    ("efficientnet_b2", 128, 4), ("efficientnet_b3", 128, 4), ("efficientnet_b3", 144, 4),
)

# Glance-and-Focus CondenseNetV2 (ours): T = 3 as for MobileNetV3; a 3x3 map at P = 96, 4x4 at P = 128
_CONDENSENETV2 = tuple((b, p, 3) for b in ("cdnv2_a", "cdnv2_b", "cdnv2_c") for p in (96, 128))

PRESETS: Dict[str, GFNetConfig] = {
    f"{b}_p{p}_t{t}": GFNetConfig(backbone=b, patch_size=p, T=t, **_BACKBONES[b])
    for b, p, t in _RELEASED + _CONDENSENETV2
}
RELEASED = tuple(f"{b}_p{p}_t{t}" for b, p, t in _RELEASED)  # the 14 configurations upstream published
