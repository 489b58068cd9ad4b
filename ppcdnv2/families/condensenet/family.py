"""The CondenseNet families (V2 and V1) in the registry: models, condensation, FLOPs, torch references,
and how the converter recognises and sizes their checkpoints.

CondenseNetV2 is recognised by its SFR keys and sized from its weight shapes.

What the shapes show (either form unless said): stages (dense-layer counts), growth (``conv_2``
outputs), bottleneck, group_3x3, SE start (first block with ``se`` keys), last SE reduction,
fc_channel, num_classes; converted form also group_1x1/condense_factor (``conv_1`` index length and
weight width) and group_trans/trans_factor (``sfr`` weight). Training form shows the latter four
only through its masks once at least one condensation stage has dropped channels. Never visible:
``hs_start_block`` (ReLU vs hard-swish has no weights) and ``stem`` (the stem stride): those come
from the matching preset, the checkpoint's ``args``, or ``--arch FILE``.
"""
from __future__ import annotations

import re
from typing import List, Mapping, Optional, Tuple

import numpy as np

from ...registry import CIFAR_EVAL, IMAGENET_EVAL, Family, WeightsInfo, register_family
from .config import V1_PRESETS, V2_PRESETS, CondenseNetConfig, CondenseNetV2Config

_LAYER = re.compile(r"^features\.denseblock_(\d+)\.denselayer_(\d+)\.")


def _divisors(n: int):
    return [d for d in range(1, n + 1) if n % d == 0]


def _mask_groups(pattern: np.ndarray, stage: float) -> Optional[Tuple[int, int]]:
    """(groups, factor) of a learned-layer mask pattern [N, C] (N: grouped axis, C: pruned axis).

    Row r belongs to group r % G, so G is the period of the rows; by stage s each group has dropped
    s * C / factor of its C channels. None when nothing has been dropped yet (the mask says nothing then).
    """
    n, c = pattern.shape
    if stage < 1 or pattern.all():
        return None
    for g in _divisors(n):
        if np.array_equal(pattern, np.tile(pattern[:g], (n // g, 1))):
            break
    kept = pattern[:g].sum(1)
    if not np.all(kept == kept[0]):
        return None
    dropped = c - int(kept[0])
    factor = round(stage * c / dropped)
    return (g, factor) if dropped * factor == round(stage) * c else None


def _first_layer(block: int) -> str:
    return f"features.denseblock_{block + 1}.denselayer_1"


def dense_trunk(state: Mapping[str, np.ndarray]) -> Tuple[dict, int]:
    """Config fields every CondenseNet-style trunk shows (stages, growth, bottleneck, group_3x3) and the
    stem's output channels; shared by the CondenseNet families."""
    depth = {}
    for key in state:
        m = _LAYER.match(key)
        if m:
            block, layer = int(m.group(1)), int(m.group(2))
            depth[block] = max(depth.get(block, 0), layer)
    if not depth or sorted(depth) != list(range(1, len(depth) + 1)):
        raise ValueError(f"dense blocks {sorted(depth)} are not numbered 1..N")
    stages = tuple(depth[b] for b in range(1, len(depth) + 1))
    growth = tuple(state[f"{_first_layer(b)}.conv_2.conv.weight"].shape[0] for b in range(len(stages)))
    w1, w2 = state[f"{_first_layer(0)}.conv_1.conv.weight"], state[f"{_first_layer(0)}.conv_2.conv.weight"]
    width = w1.shape[0]
    fields = dict(stages=stages, growth=growth, bottleneck=width // growth[0], group_3x3=width // w2.shape[1])
    return fields, state["features.init_conv.weight"].shape[0]


def converted_lgc_groups(state: Mapping[str, np.ndarray], in_channels: int) -> Tuple[int, int]:
    """(group_1x1, condense_factor) of a converted-form trunk, from its first condensed LGC: the index
    gathers ``in * G / C`` channels into a grouped conv of ``in / C`` inputs per group."""
    n_index = state[f"{_first_layer(0)}.conv_1.index"].shape[0]
    groups = n_index // state[f"{_first_layer(0)}.conv_1.conv.weight"].shape[1]
    return groups, in_channels * groups // n_index


class _CondenseFamily(Family):
    """What both CondenseNet families share: two forms, progress-driven condensation, group lasso."""

    forms = ("train", "converted")
    condensable = True
    progressive = True
    lasso = True
    paddle_layouts = ()
    published: Mapping[str, WeightsInfo] = {}

    def weights_info(self, cfg) -> WeightsInfo:
        for name, p in self.presets.items():
            if p == cfg and name in self.published:
                return self.published[name]
        return CIFAR_EVAL if cfg.stem == "cifar" else IMAGENET_EVAL

    def condense(self, model):
        from ...condense import condense_model

        return condense_model(model)

    def count_flops(self, cfg, form="train", input_size=None):
        from .flops import count_flops

        return count_flops(cfg, form, input_size)


class CondenseNetV2Family(_CondenseFamily):
    name = "condensenetv2"
    title = "CondenseNetV2"
    config_class = CondenseNetV2Config
    presets = V2_PRESETS
    paddle_layouts = ("ppim",)
    # the official evaluation (jianghaojun/CondenseNetV2): 256 → 224, bicubic for A/B, bilinear for C;
    # paper top-1, official counter's FLOPs/params
    published = {
        "cdnv2_a": IMAGENET_EVAL.replace(top1=64.4, mflops=45.87, mparams=2.038,
                                         files=("cdnv2_a_converted.pth.tar",)),
        "cdnv2_b": IMAGENET_EVAL.replace(top1=71.9, mflops=146.47, mparams=3.593,
                                         files=("cdnv2_b_converted.pth.tar",)),
        "cdnv2_c": IMAGENET_EVAL.replace(interpolation="bilinear", top1=75.9, mflops=309.74, mparams=6.178,
                                         files=("cdnv2_c_converted.pth.tar", "cdnv2_c_unconverted.pth.tar")),
    }

    def model_class(self):
        from .v2 import CondenseNetV2

        return CondenseNetV2

    def claims(self, keys) -> bool:
        return any(_LAYER.match(k) and ".sfr." in k for k in keys)

    def build_reference(self, cfg, form):
        from .reference import build_reference

        return build_reference(cfg, form, sfr_index="dense")

    def to_paddle_layout(self, model, layout):
        if layout != "ppim":
            return super().to_paddle_layout(model, layout)
        from .ppim import to_ppim_state

        return to_ppim_state(model)

    def config_from_args(self, args):
        try:
            return CondenseNetV2Config.from_official_args(args)
        except (TypeError, ValueError, AttributeError, KeyError):
            return None

    def _alternatives(self, key, shape, model):
        # the SFR index: our int64 targets [C'] or the official/ppim dense 0/1 matrix [C', C]
        if key.endswith(".sfr.index"):
            if len(shape) == 2:
                return [shape, shape[:1]]
            sfr = dict(model.named_sublayers())[key[: -len(".index")]]
            return [shape, (shape[0], sfr.out_channels)]
        return [shape]

    def infer_config(self, state: Mapping[str, np.ndarray], layout: str, form: str) -> Tuple[CondenseNetV2Config, List[str]]:
        def out_features(key):  # Linear weights: torch [out, in], Paddle [in, out]
            return state[key].shape[0 if layout == "torch" else 1]

        fields, in_ch = dense_trunk(state)
        stages, growth = fields["stages"], fields["growth"]
        blocks = len(stages)
        layer = _first_layer
        hidden = ["hs_start_block", "stem"]
        if form == "converted":
            fields["group_1x1"], fields["condense_factor"] = converted_lgc_groups(state, in_ch)
            ws = state[f"{layer(0)}.sfr.conv.weight"]
            fields["group_trans"] = growth[0] // ws.shape[1]
            fields["trans_factor"] = in_ch * fields["group_trans"] // ws.shape[0]
        else:
            for kind, names, transpose in (("conv_1", ("group_1x1", "condense_factor"), False),
                                           ("sfr", ("group_trans", "trans_factor"), True)):
                found = self._from_masks(state, kind, transpose, stages)
                if found is None:
                    hidden += list(names)
                else:
                    fields.update(zip(names, found))
        se_blocks = [b for b in range(blocks) if f"{layer(b)}.se.fc.0.weight" in state]
        fields["se_start_block"] = se_blocks[0] if se_blocks else blocks
        channels = in_ch + sum(s * g for s, g in zip(stages, growth))
        fields["last_se_reduction"] = channels // out_features("features.se_last.fc.0.weight")
        fields["fc_channel"] = out_features("fc.weight")
        fields["num_classes"] = out_features("classifier.weight") if "classifier.weight" in state else 0
        return CondenseNetV2Config(**fields), hidden

    @staticmethod
    def _from_masks(state, kind, transpose, stages):
        for b, depth in enumerate(stages):
            for j in range(1, depth + 1):
                prefix = f"features.denseblock_{b + 1}.denselayer_{j}.{kind}"
                mask = state.get(f"{prefix}._mask")
                if mask is None or f"{prefix}._stage" not in state:
                    continue
                pattern = np.asarray(mask)[:, :, 0, 0] != 0
                stage = float(np.asarray(state[f"{prefix}._stage"]).reshape(-1)[0])
                found = _mask_groups(pattern.T if transpose else pattern, stage)
                if found is not None:
                    return found
        return None


class CondenseNetFamily(_CondenseFamily):
    name = "condensenet"
    title = "CondenseNet (V1)"
    config_class = CondenseNetConfig
    presets = V1_PRESETS
    published = {  # upstream README (ShichenLiu/CondenseNet): converted models, 256 → 224 bicubic
        "condensenet74_c4_g4": IMAGENET_EVAL.replace(top1=73.8, mflops=529.33, mparams=4.77, published_form="converted",
                                                     files=("converted_condensenet_4.pth.tar",)),
        "condensenet74_c8_g8": IMAGENET_EVAL.replace(top1=71.1, mflops=274.23, mparams=2.94, published_form="converted",
                                                     files=("converted_condensenet_8.pth.tar",)),
    }

    def model_class(self):
        from .v1 import CondenseNet

        return CondenseNet

    def condensed_equivalent(self, model):
        from ...condense import pruned_classifier_twin

        return pruned_classifier_twin(model)
    # the same mask reading as V2's
    _from_masks = staticmethod(CondenseNetV2Family._from_masks)

    def claims(self, keys) -> bool:
        keys = list(keys)
        return (any(_LAYER.match(k) for k in keys) and not any(".sfr." in k for k in keys)
                and any(k.startswith("classifier.") for k in keys) and "fc.weight" not in keys)

    def build_reference(self, cfg, form):
        from .reference.condensenet import CondenseNet

        return CondenseNet(cfg, converted=form == "converted")

    def reference_in_form(self, ref, form):
        # condensing the classifier drops half of its inputs: the logits change, so verify against
        # upstream's own conversion of the loaded reference
        if form == "converted" and not ref.converted:
            from .reference.condensenet import convert_model

            return convert_model(ref)
        return ref

    def config_from_args(self, args):
        try:
            return CondenseNetConfig.from_official_args(args)
        except (TypeError, ValueError, AttributeError, KeyError):
            return None

    def infer_config(self, state: Mapping[str, np.ndarray], layout: str, form: str) -> Tuple[CondenseNetConfig, List[str]]:
        fields, in_ch = dense_trunk(state)
        stages, growth = fields["stages"], fields["growth"]
        num_features = in_ch + sum(s * g for s, g in zip(stages, growth))
        hidden = ["stem", "dropout_rate"]
        out_axis = 0 if layout == "torch" else 1  # Linear weights: torch [out, in], Paddle [in, out]
        if form == "converted":
            fields["group_1x1"], fields["condense_factor"] = converted_lgc_groups(state, in_ch)
            if "classifier.linear.weight" in state:
                weight = state["classifier.linear.weight"]
                kept = weight.shape[1 - out_axis]
                fields["num_classes"] = weight.shape[out_axis]
                fields["classifier_keep"] = 0.5 if int(num_features * 0.5) == kept else kept / num_features
            else:
                fields["num_classes"] = 0
        else:
            found = self._from_masks(state, "conv_1", False, stages)
            if found is None:
                hidden += ["group_1x1", "condense_factor"]
            else:
                fields["group_1x1"], fields["condense_factor"] = found
            hidden.append("classifier_keep")
            fields["num_classes"] = (state["classifier.weight"].shape[out_axis] if "classifier.weight" in state
                                     else 0)
        return CondenseNetConfig(**fields), hidden


CONDENSENETV2 = register_family(CondenseNetV2Family())
CONDENSENET = register_family(CondenseNetFamily())
