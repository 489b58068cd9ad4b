"""CondenseNet (V1) as a converter family: dense layers without SFR, a plain or condensed classifier.

The released ImageNet weights (``converted_condensenet_4/8.pth.tar``) are converted-form state dicts
saved from a ``DataParallel`` model in torch's legacy format; the shared reader and key mapping take
them as they are. What the shapes show: stages, growth, bottleneck, group_3x3, num_classes; converted
form also group_1x1/condense_factor (``conv_1`` index length and weight width) and the classifier's
kept features; training form shows group_1x1/condense_factor only through masks that have dropped
channels. Never visible: ``stem`` (stride only), ``dropout_rate`` and, in the training form,
``classifier_keep``: they come from the matching preset, the checkpoint's ``args`` or ``--arch FILE``.
"""
from __future__ import annotations

from typing import List, Mapping, Tuple

import numpy as np

from ..models.condensenet import PRESETS, CondenseNetConfig
from .cdnv2 import _LAYER, CondenseNetV2Family, converted_lgc_groups, dense_trunk
from .spec import FamilySpec, register_family


class CondenseNetFamily(FamilySpec):
    name = "condensenet"
    config_class = CondenseNetConfig
    presets = PRESETS
    build_function = "ppcdnv2.models.build_condensenet"
    # the same mask reading as V2's
    _from_masks = staticmethod(CondenseNetV2Family._from_masks)

    def claims(self, keys) -> bool:
        keys = list(keys)
        return (any(_LAYER.match(k) for k in keys) and not any(".sfr." in k for k in keys)
                and any(k.startswith("classifier.") for k in keys) and "fc.weight" not in keys)

    def build(self, cfg, form):
        from ..models.condensenet import CondenseNet

        return CondenseNet(cfg, form=form)

    def build_reference(self, cfg, form):
        from ..reference.condensenet import CondenseNet

        return CondenseNet(cfg, converted=form == "converted")

    def reference_in_form(self, ref, form):
        # condensing the classifier drops half of its inputs: the logits change, so verify against
        # upstream's own conversion of the loaded reference
        if form == "converted" and not ref.converted:
            from ..reference.condensenet import convert_model

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


register_family(CondenseNetFamily())

__all__ = ["CondenseNetFamily"]
