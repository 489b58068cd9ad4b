"""What CondenseNet V1 and V2 share in Paddle: the dense trunk with upstream's module names, upstream's
initialisation, and the plumbing of learned layers (progress, group lasso) and of the forward pass."""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import paddle
import paddle.nn as nn

from ...layers import LEARNED_LAYERS, LGC, batch_norm

FORMS = ("train", "converted")
HEAD_LAYERS = ("norm_last", "relu_last", "pool_last", "se_last")


class Transition(nn.Layer):
    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2D(2, 2)

    def forward(self, x):
        return self.pool(x)


def dense_trunk(cfg, form: str, dense_layer: Callable[[int, int, int], nn.Layer]
                ) -> Tuple[nn.Sequential, int, List[int]]:
    """The ``features`` trunk the CondenseNet families share, with upstream's module names: stem conv
    (``init_conv``), dense blocks of ``dense_layer(block index, in_channels, growth)`` with 2x2
    average-pool transitions between them, then ``norm_last``/``relu_last``/``pool_last``.
    Returns (trunk, output channels, output channels of each block)."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    features = nn.Sequential()
    channels = 2 * cfg.growth[0]
    features.add_sublayer("init_conv", nn.Conv2D(3, channels, 3, stride=cfg.init_stride, padding=1, bias_attr=False))
    stage_channels: List[int] = []
    last = len(cfg.stages) - 1
    for i, (depth, growth) in enumerate(zip(cfg.stages, cfg.growth)):
        block = nn.Sequential()
        for j in range(depth):
            block.add_sublayer(f"denselayer_{j + 1}", dense_layer(i, channels + j * growth, growth))
        features.add_sublayer(f"denseblock_{i + 1}", block)
        channels += depth * growth
        stage_channels.append(channels)
        if i != last:
            features.add_sublayer(f"transition_{i + 1}", Transition())
    features.add_sublayer("norm_last", batch_norm(channels))
    features.add_sublayer("relu_last", nn.ReLU())
    features.add_sublayer("pool_last", nn.AvgPool2D(cfg.pool_size))
    return features, channels, stage_channels


class DenseTrunkNet(nn.Layer):
    """Base of the CondenseNet models: ``features`` (a :func:`dense_trunk`) then ``forward_head``.

    Subclasses build ``features`` and the head; ``run_block`` lets a family run a dense block its own way
    (V2's in-place condensed blocks).
    """

    features: nn.Sequential

    def init_weights_like_upstream(self):
        """Upstream's init: kaiming-normal (fan_out) convs, every BN to 1/0, torch-default linears."""
        for layer in self.sublayers():
            if isinstance(layer, nn.Conv2D):
                w = layer.weight
                fan_out = w.shape[0] * w.shape[2] * w.shape[3]
                w.set_value(paddle.normal(0.0, math.sqrt(2.0 / fan_out), w.shape))
            elif isinstance(layer, nn.BatchNorm2D):
                layer.weight.set_value(paddle.ones_like(layer.weight))
                layer.bias.set_value(paddle.zeros_like(layer.bias))
            elif isinstance(layer, nn.Linear):
                bound = 1.0 / math.sqrt(layer.weight.shape[0])  # torch: U(±1/sqrt(fan_in)) for both
                layer.weight.set_value(paddle.uniform(layer.weight.shape, min=-bound, max=bound))
                if layer.bias is not None:
                    layer.bias.set_value(paddle.uniform(layer.bias.shape, min=-bound, max=bound))

    # --- condensation progress ------------------------------------------------------------
    def learned_layers(self):
        return [m for m in self.sublayers() if isinstance(m, LEARNED_LAYERS)]

    def set_progress(self, progress: float):
        """Training progress in [0, 1] (epoch fraction); drives the LGC/SFR condensation stages."""
        progress = float(progress)
        if not 0.0 <= progress <= 1.0:  # also NaN
            raise ValueError(f"progress must be in [0, 1], got {progress}")
        for layer in self.learned_layers():
            layer.progress = float(progress)

    def lasso_loss(self):
        return paddle.add_n([m.lasso_loss for m in self.learned_layers() if isinstance(m, LGC)])

    # --- forward --------------------------------------------------------------------------
    def run_block(self, block, x):
        return block(x)

    def forward_stages(self, x) -> List[paddle.Tensor]:
        outs = []
        for name, layer in self.features.named_children():
            if name in HEAD_LAYERS:
                break
            if name.startswith("denseblock_"):
                x = self.run_block(layer, x)
                outs.append(x)
            else:
                x = layer(x)
        return outs

    def forward_head(self, features):
        raise NotImplementedError

    def forward(self, x, progress: Optional[float] = None):
        if progress is not None:
            self.set_progress(progress)
        if self.features_only:
            return self.forward_stages(x)
        for name, layer in self.features.named_children():
            x = self.run_block(layer, x) if name.startswith("denseblock_") else layer(x)
        return self.forward_head(x)
