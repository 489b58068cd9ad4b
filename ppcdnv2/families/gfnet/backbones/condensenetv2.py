"""CondenseNetV2 (A/B/C) as a GFNet encoder (new: upstream GFNet has no CondenseNet backbone).

The network is ``ppcdnv2``'s CondenseNetV2, in either form, with its own state-dict keys (so ImageNet
weights of ``cdnv2_a/b/c`` start GFNet training as they are); only the end changes: the final average pool
adapts to the patch (a P x P patch leaves a ceil(P / 32)-sided map, not 7x7), and ``forward`` returns
``(vector, feature map)`` as every GFNet backbone does: the map after ``relu_last`` (800 / 1176 / 2064
channels) and the ``fc -> HS`` embedding of the pooled, squeeze-excited map (828 / 1024 / 1024 wide), the
input of the classifier, as MobileNetV3's efficient head gives GFNet its 1280-wide vector.
"""
from __future__ import annotations

import paddle
import paddle.nn.functional as F

from ...condensenet.v2 import CondenseNetV2

NAMES = ("cdnv2_a", "cdnv2_b", "cdnv2_c")


class GFCondenseNetV2(CondenseNetV2):
    """CondenseNetV2 with GFNet's backbone interface (``forward -> (vector, map)``, ``classify``)."""

    def __init__(self, cfg, form: str = "train", features_only: bool = False):
        if features_only:
            raise ValueError("a GFNet encoder returns (vector, feature map); features_only is not for it")
        super().__init__(cfg, form=form)
        self.feature_num = cfg.fc_channel
        self.fmap_channels = self.num_features

    def forward(self, x, progress=None):
        if progress is not None:
            self.set_progress(progress)
        for name, layer in self.features.named_children():
            if name == "pool_last":
                break
            x = self.run_block(layer, x) if name.startswith("denseblock_") else layer(x)
        pooled = self.features.se_last(F.adaptive_avg_pool2d(x, 1))
        return self.fc_act(self.fc(paddle.flatten(pooled, 1))), x

    def classify(self, vector):
        return self.classifier(vector)


def build(name: str, num_classes: int = 1000, form: str = "train", arch=None) -> GFCondenseNetV2:
    """``name``'s preset with ``num_classes`` and the fields of ``arch`` (a mapping or pairs) changed."""
    from ....registry import preset

    if name not in NAMES:
        raise KeyError(f"unknown GFNet CondenseNetV2 {name!r}; known: {', '.join(NAMES)}")
    return GFCondenseNetV2(preset(name, num_classes=num_classes, **dict(arch or ())), form=form)
