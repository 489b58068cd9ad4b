"""A PyTorch reference CondenseNetV2 with the official module layout, both forms.

Written for ppcdnv2 (not copied) from the semantics of the official code (jianghaojun/CondenseNetV2,
``model/condensenetv2.py``, ``model/converted_condensenetv2.py``, ``utils/layers.py``), so that its
``state_dict`` keys are the official ones, ``num_batches_tracked`` included: official checkpoints
load into it with ``strict=True``. It stands in for upstream in the parity tests and in the
converter's ``--verify``, hence it keeps upstream's behaviour where ``ppcdnv2`` deliberately differs:

* training form: ``LGC``/``SFR`` drop at most ONE condensation stage per forward call and only while
  ``progress < 0.5005`` (upstream's ``_check_drop``); a run that skips the window ends under-condensed.
  Progress is a per-layer attribute set by ``set_progress`` (upstream keeps one class-level global).
* converted form: ``CondenseSFR`` applies the official float32 C'×C 0/1 matrix by matmul
  (``sfr_index="dense"``, the official layout), or, with ``sfr_index="target"``, an int64 target channel
  per conv output and ``index_add`` like ``ppcdnv2``.

``condense_reference`` is an independent vectorised re-implementation of upstream's conversion
(``CondensingLGC``/``CondensingSFR``) used to cross-check ``ppcdnv2.condense``; ``randomize_`` gives
every parameter and buffer non-trivial values (masks driven through every stage) with logits of std ≈ 1.
"""
from __future__ import annotations

from typing import Optional, Union

from ..config import CondenseNetV2Config
from .common import (Conv, HS, SELayer, dense_trunk, init_like_upstream_, make_activation,  # first: clear error
                     shuffle, shuffle_trans)                                                # without torch
from ....torch_tools import calibrate_bn_, randn, randomize_weights_, state_dict_numpy

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LGC", "SFR", "CondenseLGC", "CondenseSFR", "ReferenceCondenseNetV2", "build_reference",
           "set_progress", "condense_reference", "randomize_", "state_dict_numpy", "paddle_twin",
           "SFR_INDEX_MODES", "SMALL_CONFIG"]

SFR_INDEX_MODES = ("dense", "target")

# Small but complete (CIFAR stem, three blocks, ReLU and HS, SE, factors 4): for fast tests of both
# frameworks; every layer kind of the presets is in it.
SMALL_CONFIG = CondenseNetV2Config(stages=(1, 2, 2), growth=(8, 8, 16), condense_factor=4, trans_factor=4,
                                   group_1x1=4, group_3x3=4, group_trans=4, hs_start_block=1, se_start_block=2,
                                   last_se_reduction=8, fc_channel=32, num_classes=10, stem="cifar")


def upstream_stage(progress: float, factor: int) -> Optional[int]:
    """The stage upstream's ``_check_drop`` aims for at ``progress``; None outside its window (p >= 0.5005)."""
    if not progress * 2 < 1 + 1e-3:
        return None
    for i in range(factor - 1):
        if progress * 2 < (i + 1) / (factor - 1):
            return i
    return factor - 1


class _Learned(nn.Module):
    """BN → act → (dropout) → dense conv × ``_mask``; subclasses say which side of the weight is pruned."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 condense_factor=None, dropout_rate=0.0, activation="ReLU"):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.activation_type = activation
        self.add_module("activation", make_activation(activation))
        self.dropout_rate = dropout_rate
        if dropout_rate > 0:
            self.drop = nn.Dropout(dropout_rate)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=False)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.condense_factor = groups if condense_factor is None else condense_factor
        self.progress = 0.0
        self.register_buffer("_count", torch.zeros(1))
        self.register_buffer("_stage", torch.zeros(1))
        self.register_buffer("_mask", torch.ones(self.conv.weight.shape))
        if in_channels % groups or out_channels % groups or self._pruned % self.condense_factor:
            raise ValueError(f"{type(self).__name__}: {in_channels}->{out_channels} channels do not fit "
                             f"groups={groups}, condense_factor={self.condense_factor}")

    @property
    def count(self) -> int:
        return int(self._count[0])

    @property
    def stage(self) -> int:
        return int(self._stage[0])

    @property
    def mask(self):
        return self._mask

    def forward(self, x):
        self._check_drop()
        x = self.activation(self.norm(x))
        if self.dropout_rate > 0:
            x = self.drop(x)
        return F.conv2d(x, self.conv.weight * self._mask, None, self.conv.stride, self.conv.padding,
                        self.conv.dilation, 1)

    @torch.no_grad()
    def _check_drop(self):
        """Upstream: jump ``_stage`` to the target stage but drop only one stage's worth of channels."""
        stage = upstream_stage(self.progress, self.condense_factor)
        if stage is None or bool((self._stage >= stage).all()):
            return
        self._stage.fill_(stage)
        self._dropping(self._pruned // self.condense_factor)

    @torch.no_grad()
    def _dropping(self, delta: int):
        """Each group drops the ``delta`` kept channels of least L1 weight (dropped ones score 0 and sort first)."""
        if self.conv.kernel_size != (1, 1):
            raise NotImplementedError("learned layers are 1x1 convolutions upstream")
        mask = self._mask[:, :, 0, 0]
        importance = self._importance(self.conv.weight[:, :, 0, 0].abs() * mask)  # [G, pruned axis]
        order = torch.sort(importance, dim=1, stable=True).indices[:, self.count:self.count + delta]
        keep = torch.ones_like(importance).scatter_(1, order, 0.0)
        self._apply_keep(self._mask.view(mask.shape), keep)
        self._count.fill_(self.count + delta)

    @property
    def lasso_loss(self):
        if bool((self._stage >= self.groups - 1).all()):
            return 0
        weight = (self.conv.weight * self._mask)[:, :, 0, 0].pow(2)
        return self._importance(weight).clamp(min=1e-6).sqrt().sum()


class LGC(_Learned):
    """Learned group conv: output group g (rows g, g+G, ...) keeps 1/factor of the input channels."""

    @property
    def _pruned(self):
        return self.in_channels

    def _importance(self, weight):
        return weight.view(self.out_channels // self.groups, self.groups, self.in_channels).sum(0)

    def _apply_keep(self, mask2d, keep):
        mask2d.view(-1, self.groups, self.in_channels).mul_(keep)  # row r belongs to group r % G


class SFR(_Learned):
    """Sparse feature reactivation: input group g (columns g, g+G, ...) keeps 1/factor of the outputs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        nn.init.zeros_(self.norm.weight)  # upstream's own init; the network's _initialize sets it to 1 again
        nn.init.zeros_(self.norm.bias)

    @property
    def _pruned(self):
        return self.out_channels

    def _importance(self, weight):
        return weight.view(self.out_channels, self.in_channels // self.groups, self.groups).sum(1).t()

    def _apply_keep(self, mask2d, keep):
        mask2d.view(self.out_channels, -1, self.groups).mul_(keep.t()[:, None, :])  # column c: group c % G


class CondenseLGC(nn.Module):
    """Gather the kept input channels (``index``), grouped conv, shuffle the groups back."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, activation="ReLU"):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.norm = nn.BatchNorm2d(in_channels)
        self.activation = make_activation(activation)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              groups=groups, bias=False)
        self.register_buffer("index", torch.zeros(in_channels, dtype=torch.int64))

    def forward(self, x):
        x = torch.index_select(x, 1, self.index)
        return shuffle(self.conv(self.activation(self.norm(x))), self.groups)


class CondenseSFR(nn.Module):
    """Grouped conv over the growth channels, mapped onto ``out_channels`` feature channels.

    ``sfr_index="dense"``: ``index`` is the official float32 [C', C] 0/1 matrix, applied by matmul.
    ``sfr_index="target"``: ``index`` is int64 [C'] (target channel of each conv output), ``index_add``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, activation="ReLU",
                 condense_factor=None, sfr_index="dense"):
        super().__init__()
        if sfr_index not in SFR_INDEX_MODES:
            raise ValueError(f"sfr_index must be one of {SFR_INDEX_MODES}, got {sfr_index!r}")
        factor = groups if condense_factor is None else condense_factor
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.conv_channels = out_channels * groups // factor
        self.sfr_index = sfr_index
        self.norm = nn.BatchNorm2d(in_channels)
        self.activation = make_activation(activation)
        self.conv = nn.Conv2d(in_channels, self.conv_channels, kernel_size, stride=stride, padding=padding,
                              groups=groups, bias=False)
        if sfr_index == "dense":
            self.register_buffer("index", torch.zeros(self.conv_channels, out_channels))
        else:
            self.register_buffer("index", torch.zeros(self.conv_channels, dtype=torch.int64))

    def forward(self, x):
        x = self.conv(shuffle_trans(self.activation(self.norm(x)), self.groups))
        n, c, h, w = x.shape
        if self.sfr_index == "dense":
            y = torch.matmul(x.view(n, c, h * w).transpose(1, 2), self.index)  # [N, HW, C]
            return y.transpose(1, 2).reshape(n, self.out_channels, h, w)
        return x.new_zeros(n, self.out_channels, h, w).index_add_(1, self.index, x)


class DenseLayer(nn.Module):
    """LGC 1x1 → grouped 3x3 → (SE) → SFR added onto the input; output ``cat([x + sfr, new])``."""

    def __init__(self, in_channels, growth, cfg: CondenseNetV2Config, activation, use_se, form, sfr_index):
        super().__init__()
        width = cfg.bottleneck * growth
        if form == "train":
            self.conv_1 = LGC(in_channels, width, 1, groups=cfg.group_1x1, condense_factor=cfg.condense_factor,
                              activation=activation)
        else:
            self.conv_1 = CondenseLGC(in_channels * cfg.group_1x1 // cfg.condense_factor, width, 1,
                                      groups=cfg.group_1x1, activation=activation)
        self.conv_2 = Conv(width, growth, 3, padding=1, groups=cfg.group_3x3, activation=activation)
        if form == "train":
            self.sfr = SFR(growth, in_channels, 1, groups=cfg.group_trans, condense_factor=cfg.trans_factor,
                           activation=activation)
        else:
            self.sfr = CondenseSFR(growth, in_channels, 1, groups=cfg.group_trans, activation=activation,
                                   condense_factor=cfg.trans_factor, sfr_index=sfr_index)
        self.use_se = use_se
        if use_se:
            self.se = SELayer(growth, reduction=1)

    def forward(self, x):
        new = self.conv_2(self.conv_1(x))
        if self.use_se:
            new = self.se(new)
        return torch.cat([x + self.sfr(new), new], 1)


class ReferenceCondenseNetV2(nn.Module):
    """Upstream's ``CondenseNetV2`` (``form="train"``) / ``ConvertedCondenseNetV2`` (``form="converted"``)."""

    def __init__(self, cfg: CondenseNetV2Config, form: str = "train", sfr_index: str = "dense"):
        super().__init__()
        if form not in ("train", "converted"):
            raise ValueError(f"form must be 'train' or 'converted', got {form!r}")
        if sfr_index not in SFR_INDEX_MODES:
            raise ValueError(f"sfr_index must be one of {SFR_INDEX_MODES}, got {sfr_index!r}")
        self.cfg, self.form, self.sfr_index = cfg, form, sfr_index

        def layer(block, in_channels, growth):
            activation = "HS" if block >= cfg.hs_start_block else "ReLU"
            return DenseLayer(in_channels, growth, cfg, activation, block >= cfg.se_start_block, form, sfr_index)

        self.features, channels = dense_trunk(cfg, layer)
        self.features.add_module("se_last", SELayer(channels, reduction=cfg.last_se_reduction))
        self.num_features = channels
        self.fc = nn.Linear(channels, cfg.fc_channel)
        self.fc_act = HS()
        self.classifier = nn.Linear(cfg.fc_channel, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        init_like_upstream_(self)

    def learned_layers(self):
        return [m for m in self.modules() if isinstance(m, _Learned)]

    def forward(self, x, progress=None):
        if progress:  # upstream's test: progress 0 (or None) leaves the current progress in place
            set_progress(self, progress)
        out = self.features(x)
        return self.classifier(self.fc_act(self.fc(out.view(out.size(0), -1))))


# --- API ----------------------------------------------------------------------------------------
def _resolve_cfg(cfg) -> CondenseNetV2Config:
    if isinstance(cfg, CondenseNetV2Config):
        return cfg
    if isinstance(cfg, str):
        from ....registry import preset

        return preset(cfg)
    if isinstance(cfg, dict):
        return CondenseNetV2Config.from_dict(cfg)
    raise TypeError(f"expected a CondenseNetV2Config, a preset name or a dict, got {type(cfg).__name__}")


def build_reference(cfg: Union[CondenseNetV2Config, str, dict], form: Optional[str] = None,
                    sfr_index: str = "dense") -> ReferenceCondenseNetV2:
    """A reference model; ``form`` defaults to ``"converted"`` for ``converted_*`` names, else ``"train"``."""
    if form is None:
        from ....registry import model_entry

        form = model_entry(cfg).form if isinstance(cfg, str) else "train"
    return ReferenceCondenseNetV2(_resolve_cfg(cfg), form=form, sfr_index=sfr_index)


def set_progress(model: nn.Module, progress: float) -> None:
    """Training progress in [0, 1] for every LGC/SFR of ``model`` (upstream's ``global_progress``)."""
    for m in model.modules():
        if isinstance(m, _Learned):
            m.progress = float(progress)


def _kept_in_order(first: "torch.Tensor", keep: int, name: str) -> "torch.Tensor":
    """Per row of the 0/1 ``first`` [G, C]: the first ``keep`` kept columns, ascending (upstream's scan)."""
    kept = first != 0
    short = kept.sum(1) < keep
    if bool(short.any()):
        raise ValueError(f"{name}: group {int(short.nonzero()[0])} keeps fewer than {keep} channels; "
                         "upstream's conversion would leave zero weights there")
    # stable sort of the 'dropped' flag lists kept columns first in ascending order; upstream stops at `keep`
    return torch.sort((~kept).to(torch.int8), dim=1, stable=True).indices[:, :keep]


@torch.no_grad()
def _condense_lgc(src: LGC, dst: CondenseLGC, name: str):
    g, (o, i) = src.groups, src.conv.weight.shape[:2]
    keep = dst.in_channels // g
    # upstream reads mask row i as the pattern of group i (rows i, i+G, ... share it)
    cols = _kept_in_order(src._mask[:g, :, 0, 0], keep, name)  # [G, keep]
    w = src.conv.weight.view(o // g, g, i, *src.conv.weight.shape[2:]).transpose(0, 1)  # [G, O/G, I, k, k]
    w = w[torch.arange(g)[:, None, None], torch.arange(o // g)[None, :, None], cols[:, None, :]]
    dst.conv.weight.copy_(w.reshape(o, keep, *w.shape[3:]))
    index = cols.reshape(-1)
    dst.index.copy_(index)
    for attr in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst.norm, attr).copy_(getattr(src.norm, attr)[index])


@torch.no_grad()
def _condense_sfr(src: SFR, dst: CondenseSFR, name: str):
    g, (o, i) = src.groups, src.conv.weight.shape[:2]
    keep = dst.conv_channels // g
    # upstream reads mask column j as the pattern of input group j and numbers its kept rows ascending
    rows = _kept_in_order(src._mask[:, :g, 0, 0].t(), keep, name)  # [G, keep]: conv row j*keep + s
    w = src.conv.weight.view(o, i // g, g, *src.conv.weight.shape[2:]).permute(2, 0, 1, 3, 4)  # [G, O, I/G, k, k]
    w = w[torch.arange(g)[:, None], rows]  # [G, keep, I/G, k, k]
    dst.conv.weight.copy_(w.reshape(g * keep, i // g, *w.shape[3:]))
    targets = rows.reshape(-1)
    if dst.sfr_index == "dense":
        dst.index.zero_()
        dst.index[torch.arange(targets.numel()), targets] = 1.0
    else:
        dst.index.copy_(targets)
    for attr in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst.norm, attr).copy_(getattr(src.norm, attr))


@torch.no_grad()
def condense_reference(model: ReferenceCondenseNetV2, sfr_index: Optional[str] = None) -> ReferenceCondenseNetV2:
    """Upstream's ``convert_model`` on a training-form reference, vectorised; returns a new converted model.

    Placement as upstream: CondenseLGC takes each group's first ``C_in/factor`` kept input channels in
    ascending order, group after group; CondenseSFR numbers each input group's kept output channels in
    ascending order. Like upstream it reads the pattern of a group from its first row/column.
    """
    if model.form != "train":
        raise ValueError("condense_reference expects a training-form reference model")
    out = ReferenceCondenseNetV2(model.cfg, form="converted", sfr_index=sfr_index or model.sfr_index)
    src_modules = dict(model.named_modules())
    handled = set()
    for name, dst in out.named_modules():
        if isinstance(dst, CondenseLGC):
            _condense_lgc(src_modules[name], dst, name)
        elif isinstance(dst, CondenseSFR):
            _condense_sfr(src_modules[name], dst, name)
        else:
            continue
        handled.add(name + ".")
    src_state = model.state_dict()
    for key, value in out.state_dict().items():
        if not key.startswith(tuple(handled)):
            value.copy_(src_state[key])
    return out.train(model.training)


@torch.no_grad()
def _drive_masks_(model: ReferenceCondenseNetV2, gen: "torch.Generator") -> None:
    """Take every LGC/SFR through all its stages with upstream's own ``_check_drop``, then redraw its weights.

    Each group ends up keeping its own random 1/factor of the channels, ``_stage == factor-1`` and
    ``_count`` as upstream leaves them. The redraw makes the final weights non-zero under the mask (as
    in real checkpoints, where pruned weights are small but not zero), so a port that forgot the
    mask would show.
    """
    for layer in model.learned_layers():
        f = layer.condense_factor
        for stage in range(1, f):
            layer.progress = 0.5 if stage == f - 1 else (stage + 0.5) / (f - 1) / 2
            layer._check_drop()
        layer.progress = 0.0
        layer.conv.weight.copy_(randn(gen, layer.conv.weight.shape, float(layer.conv.weight.std())))


@torch.no_grad()
def randomize_(model: ReferenceCondenseNetV2, seed: int = 0, batch: int = 8) -> ReferenceCondenseNetV2:
    """Give every parameter and buffer of ``model`` seeded, non-trivial values; logits come out with std ≈ 1.

    Training form: random convs/linears/BN affine (SFR BN included), masks driven through every stage
    (each keeps exactly 1/factor, ``_stage == factor-1``), BN statistics from a forward pass on N(0, 1)
    inputs (``batch`` images: fewer fit the statistics to those images and leave the network badly
    conditioned on others) then jittered, classifier rescaled so the logits on such inputs have std ≈ 1.
    Converted form:
    a training-form twin randomised with the same seed, then ``condense_reference``-ed into ``model``.
    """
    cfg = model.cfg
    if model.form == "converted":
        twin = randomize_(ReferenceCondenseNetV2(cfg, form="train", sfr_index=model.sfr_index), seed, batch)
        model.load_state_dict(condense_reference(twin, model.sfr_index).state_dict())
        return model
    gen = torch.Generator().manual_seed(int(seed))
    was_training = model.training
    randomize_weights_(model, gen)
    _drive_masks_(model, gen)
    x = randn(gen, (batch, 3, cfg.input_size, cfg.input_size))
    logits = calibrate_bn_(model, x, gen)
    if cfg.num_classes > 0:
        std = float(logits.std())
        model.classifier.weight.div_(std)
        model.classifier.bias.div_(std)
    return model.train(was_training)


def paddle_twin(model: ReferenceCondenseNetV2):
    """The ``ppcdnv2`` model (same config and form) holding ``model``'s weights, loaded strictly via the keymap."""
    from ....convert.keymap import torch_to_paddle_state
    from ....weights import load_state_dict
    from ..v2 import CondenseNetV2

    twin = CondenseNetV2(model.cfg, form=model.form)
    load_state_dict(twin, torch_to_paddle_state(state_dict_numpy(model), twin), where="reference state")
    twin.train() if model.training else twin.eval()
    return twin
