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
from importlib import import_module

_MODULES = {
    "resnet50": "resnet",
    "densenet121": "densenet", "densenet169": "densenet", "densenet201": "densenet",
    "mobilenetv3_large_100": "mobilenetv3", "mobilenetv3_large_125": "mobilenetv3",
    "efficientnet_b2": "efficientnet", "efficientnet_b3": "efficientnet",
    "regnety_600m": "regnet", "regnety_800m": "regnet", "regnety_1.6g": "regnet",
}
BACKBONES = tuple(_MODULES)


def build_backbone(name: str):
    """The Paddle backbone ``name`` (one of :data:`BACKBONES`), randomly initialised."""
    if name not in _MODULES:
        raise KeyError(f"unknown GFNet backbone {name!r}; known: {', '.join(BACKBONES)}")
    return import_module(f".{_MODULES[name]}", __name__).build(name)
