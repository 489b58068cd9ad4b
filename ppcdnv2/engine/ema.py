"""Exponential moving average of a model's weights (CondenseNetV2 or CondenseNet V1).

As upstream's modified ``ModelEma``: every floating-point entry of the state (weights and the
BatchNorm running statistics) is averaged, ``ema = decay * ema + (1 - decay) * model``, while the
condensation state (``_mask``, ``_count``, ``_stage``) and integer buffers (condensed ``index``)
are copied: a mask is 0/1 and must stay the model's, never a blend of old and new masks.
"""
from __future__ import annotations

import paddle

COPIED = ("_mask", "_count", "_stage", "index")


def is_copied(key: str, tensor) -> bool:
    return key.rsplit(".", 1)[-1] in COPIED or not paddle.is_floating_point(tensor)


class ModelEMA:
    def __init__(self, model, ema_model, decay: float = 0.9998):
        """``ema_model``: a second model of the same architecture; it starts as a copy of ``model``."""
        self.decay = float(decay)
        self.module = ema_model
        self.module.eval()
        for p in self.module.parameters():
            p.stop_gradient = True
        src, dst = model.state_dict(), self.module.state_dict()
        if list(src) != list(dst):
            raise ValueError("EMA model and model have different state keys")
        self._pairs = [(k, dst[k], src[k], is_copied(k, src[k])) for k in src]
        self.copy_from_model()

    @paddle.no_grad()
    def copy_from_model(self):
        """Make the average equal to the model (start, or after loading weights into the model)."""
        for _, e, m, _ in self._pairs:
            paddle.assign(m, e)

    @paddle.no_grad()
    def copy_condensation_state(self):
        """Copy masks and counters only (after the model's masks changed outside a training step)."""
        for _, e, m, copied in self._pairs:
            if copied:
                paddle.assign(m, e)

    @paddle.no_grad()
    def update(self):
        d = self.decay
        for _, e, m, copied in self._pairs:
            if copied:
                paddle.assign(m, e)
            else:
                paddle.assign(e * d + m * (1.0 - d), e)
