"""GFNet's backbones in Paddle, with upstream's state-dict layouts (torchvision, geffnet, pycls).

Every backbone is built by name with :func:`build_backbone` and has one interface:

* ``forward(x) -> (vector [B, feature_num], feature_map [B, C, h, w])`` as upstream GFNet's modified models
  return them (the map detached in upstream; here simply returned);
* ``classify(vector) -> logits``: the backbone's own classifier head (``fc`` or ``classifier``) on the vector
  (GFNet's step-0 prediction for RegNet, MobileNetV3 and EfficientNet);
* attributes ``feature_num`` (vector width) and ``fmap_channels`` (feature-map channels).

State-dict keys equal upstream's without the ``module.`` prefix, up to the frameworks' renames
(BatchNorm ``_mean``/``_variance``, Linear weights transposed), so ``ppcdnv2.convert.keymap`` maps them.
"""
import re
from importlib import import_module
from typing import Dict, Mapping

_MODULES = {
    "resnet50": "resnet",
    "densenet121": "densenet", "densenet169": "densenet", "densenet201": "densenet",
    "mobilenetv3_large_100": "mobilenetv3", "mobilenetv3_large_125": "mobilenetv3",
    "efficientnet_b2": "efficientnet", "efficientnet_b3": "efficientnet",
    "regnety_600m": "regnet", "regnety_800m": "regnet", "regnety_1.6g": "regnet",
    "cdnv2_a": "condensenetv2", "cdnv2_b": "condensenetv2", "cdnv2_c": "condensenetv2",
}
BACKBONES = tuple(_MODULES)
CONDENSABLE = ("cdnv2_a", "cdnv2_b", "cdnv2_c")  # backbones with a training and a condensed form


def build_backbone(name: str, num_classes: int = 1000, form: str = "train", arch=None):
    """The Paddle backbone ``name`` (one of :data:`BACKBONES`) with a ``num_classes`` head, randomly
    initialised; ``form="converted"`` (condensed) and ``arch`` (fields changed from the preset) for the
    :data:`CONDENSABLE` ones."""
    if name not in _MODULES:
        raise KeyError(f"unknown GFNet backbone {name!r}; known: {', '.join(BACKBONES)}")
    module = import_module(f".{_MODULES[name]}", __name__)
    if name in CONDENSABLE:
        return module.build(name, num_classes, form=form, arch=arch)
    if form != "train" or arch:
        raise ValueError(f"the {name} backbone has one form and one architecture; only {', '.join(CONDENSABLE)} "
                         f"condense or take backbone_arch")
    return module.build(name, num_classes)


# torchvision's released DenseNet files predate its module names: ``denselayer1.norm.1`` for ``norm1``
_TORCHVISION_DENSENET = re.compile(r"(denselayer\d+)\.(norm|relu|conv)\.(\d+)\.")


def zoo_state_to_upstream(state: Mapping) -> Dict:
    """A backbone file as its model zoo releases it, in the key layout of upstream GFNet's models (what
    ``train.py --model_path`` loads): pycls' RegNet keeps its classifier in ``head.fc`` where GFNet's
    modified pycls has a top-level ``fc``; torchvision's DenseNet files use the old ``norm.1`` names.
    Other keys pass unchanged."""
    out = {}
    for key, value in state.items():
        key = _TORCHVISION_DENSENET.sub(r"\1.\2\3.", key)
        if key.startswith("head.fc."):
            key = key[len("head."):]
        out[key] = value
    return out
