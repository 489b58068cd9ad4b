"""FLOPs / parameter counts of the CondenseNet families, from a config alone (no framework needed).

CondenseNetV2: the rules of the official counter (``measure_model`` in the upstream ``utils/tools.py``),
so the published figures are reproduced exactly: one multiply-add counts as one op; learned layers
(LGC/SFR) count their dense 1x1 conv divided by the condensation factor; ReLU and ReLU6 count one op
per element (hard-swish is counted as its inner ReLU6 only); pooling counts every window element; a
Linear counts its weights; Sigmoid two ops per element; BatchNorm only adds its affine parameters.
Everything else a forward pass does is invisible to that counter: the residual add, the concat, the SE
rescale, the hard-swish multiply, and — in the condensed model — the LGC channel gather and the SFR
channel mapping. ``executed`` accounts for the latter so deployment cost can be compared honestly.

CondenseNet (V1): upstream (ShichenLiu/CondenseNet ``utils.measure_model``) counts a
``LearnedGroupConv`` as its ReLU (one op per input element) plus its dense conv divided by the
condensation factor (params likewise, BN params included); a conv by its weights times output size;
ReLU one op per element; average pools every window element; a Linear its weights plus its bias;
BatchNorm only its parameters. The published tables use both forms: the CIFAR table was measured on
the training model, the ImageNet one on the converted model, whose ``CondenseLinear`` reads only half
of the features. Both are reproduced: ``form="train"`` and ``form="converted"``.

Why analytic: the official numbers come from hooking a torch model; recomputing them from the config
lets the tests pin the published figures without torch, and makes every term visible.
"""
from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Tuple, Union

from ...flops import FlopsReport, LayerCount, conv_out as _conv_out, sum_counts
from .config import CondenseNetConfig, CondenseNetV2Config

__all__ = ["count_flops", "count_flops_v2", "count_flops_v1", "conv_macs"]

FORMS = ("train", "converted")
EXTRA_KEYS = ("lgc_index_select", "sfr_scatter_add", "sfr_dense_matmul_macs", "se_scale", "residual_add")


def count_flops(cfg, form: str = "train", input_size: Optional[int] = None) -> FlopsReport:
    """Either family's count of a config object (V1 or V2) in ``form``."""
    if isinstance(cfg, CondenseNetConfig):
        return count_flops_v1(cfg, form, input_size)
    return count_flops_v2(cfg, form, input_size)


# --- official per-module rules (one image) ------------------------------------------------------

def _bn(channels: int) -> LayerCount:
    return LayerCount("bn", 0, 2 * channels, 2 * channels)


def _act(channels: int, hw: int) -> LayerCount:
    # ReLU: one op per element; HS: only its ReLU6 is visible, also one op per element.
    return LayerCount("act", channels * hw, 0, 0)


def _se(channels: int, reduction: int, hw: int) -> LayerCount:
    hidden = channels // reduction
    lc = LayerCount("se")
    lc.flops = channels * hw  # adaptive average pool reads every element
    lc.flops += channels * hidden + hidden + hidden * channels  # fc, ReLU, fc (no biases)
    lc.flops += 2 * channels  # Sigmoid
    lc.params = lc.converted_params = 2 * channels * hidden
    lc.extras["se_scale"] = channels * hw
    return lc


def _dense_layer(cfg: CondenseNetV2Config, cin: int, k: int, hw: int, use_se: bool) -> LayerCount:
    width = cfg.bottleneck * k
    lc = LayerCount("layer")
    # conv_1, LGC: BN(cin) → act → 1x1 cin→width, counted dense / condense_factor.
    lc.add(_bn(cin))
    lc.add(_act(cin, hw))
    lc.flops += cin * width * hw / cfg.condense_factor
    lc.params += cin * width / cfg.condense_factor
    lgc_in = cin * cfg.group_1x1 // cfg.condense_factor  # channels the condensed LGC gathers
    lc.converted_params += 2 * lgc_in - 2 * cin + (lgc_in // cfg.group_1x1) * width
    lc.extras["lgc_index_select"] = lgc_in * hw
    # conv_2: BN(width) → act → 3x3 grouped width→k, padding 1 (same size).
    lc.add(_bn(width))
    lc.add(_act(width, hw))
    conv2 = width * k * 9 // cfg.group_3x3
    lc.flops += conv2 * hw
    lc.params += conv2
    lc.converted_params += conv2
    if use_se:
        lc.add(_se(k, 1, hw))
    # sfr, SFR: BN(k) → act → 1x1 k→cin, counted dense / trans_factor.
    lc.add(_bn(k))
    lc.add(_act(k, hw))
    lc.flops += k * cin * hw / cfg.trans_factor
    lc.params += k * cin / cfg.trans_factor
    sfr_out = cin * cfg.group_trans // cfg.trans_factor  # rows of the condensed SFR conv
    lc.converted_params += sfr_out * (k // cfg.group_trans)
    lc.extras["sfr_scatter_add"] = sfr_out * hw
    lc.extras["sfr_dense_matmul_macs"] = sfr_out * cin * hw
    lc.extras["residual_add"] = cin * hw
    return lc


def count_trunk(cfg, size: int, dense_layer: Callable[[int, int, int, int], LayerCount]
                ) -> Tuple[List[LayerCount], int, int]:
    """Rows of the part the CondenseNet families share: the 3x3 stem, each dense block (the sum of
    ``dense_layer(block index, in_channels, growth, h*w)`` over its layers) and the 2x2 average-pool
    transitions. ``size``: input side. Returns (rows, channels, spatial side) after the last block."""
    layers: List[LayerCount] = []
    channels = 2 * cfg.growth[0]
    size = _conv_out(size, 3, cfg.init_stride, 1)
    stem_params = 3 * channels * 9
    layers.append(LayerCount("stem", stem_params * size * size, stem_params, stem_params))
    last = len(cfg.stages) - 1
    for i, (depth, k) in enumerate(zip(cfg.stages, cfg.growth)):
        if size < 1:
            raise ValueError(f"input too small: no spatial extent left at dense block {i + 1}")
        block = LayerCount(f"block{i + 1}")
        for j in range(depth):
            block.add(dense_layer(i, channels + j * k, k, size * size))
        layers.append(block)
        channels += depth * k
        if i != last:
            out = _conv_out(size, 2, 2)
            layers.append(LayerCount(f"trans{i + 1}", channels * out * out * 4))
            size = out
    return layers, channels, size


def check_final_pool(cfg, size: int, channels: int, head: str) -> None:
    """The final ``pool_size`` average pool must leave 1x1, or the ``head`` layer cannot take the features."""
    pooled = _conv_out(size, cfg.pool_size, cfg.pool_size)
    if pooled != 1:
        raise ValueError(f"the final {cfg.pool_size}x{cfg.pool_size} pool sees {size}x{size} and leaves "
                         f"{pooled}x{pooled}; {head} expects {channels} features, so this input size cannot run")


def resolve(cfg, form: Optional[str] = None, config_class=CondenseNetV2Config) -> Tuple[Any, str, str]:
    """(config, name, form) of a registered name, a ``config_class`` or a dict of its fields;
    ``form`` defaults to ``"converted"`` for ``converted_*`` names, else ``"train"``."""
    if isinstance(cfg, str):
        from ...registry import model_entry, preset

        name, entry_form = cfg, model_entry(cfg).form
        cfg = preset(name)
    elif isinstance(cfg, Mapping):
        cfg, name, entry_form = config_class.from_dict(cfg), "custom", "train"
    elif isinstance(cfg, config_class):
        name, entry_form = "custom", "train"
    else:
        raise TypeError(f"expected a model name, a {config_class.__name__} or a dict, got {type(cfg).__name__}")
    form = form or entry_form
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    return cfg, name, form


def count_flops_v2(cfg: Union[str, CondenseNetV2Config, Mapping], form: Optional[str] = None,
                   input_size: Optional[int] = None) -> FlopsReport:
    """Count a CondenseNetV2 per image.

    ``form`` defaults to ``"converted"`` for ``converted_*`` preset names, else ``"train"``. ``flops``
    always follows the official rules (they are defined on the training form and equal to the
    condensed convolutions' real MACs); only ``params`` differs between forms.
    """
    cfg, name, form = resolve(cfg, form)
    size = cfg.input_size if input_size is None else int(input_size)

    layers, channels, size = count_trunk(
        cfg, size, lambda block, cin, k, hw: _dense_layer(cfg, cin, k, hw, block >= cfg.se_start_block))
    check_final_pool(cfg, size, channels, "fc")

    head = LayerCount("head")
    head.add(_bn(channels))
    head.add(_act(channels, size * size))  # relu_last
    head.flops += channels * cfg.pool_size * cfg.pool_size
    head.add(_se(channels, cfg.last_se_reduction, 1))
    fc = channels * cfg.fc_channel
    head.flops += fc + cfg.fc_channel  # fc weights, then HS counted as its ReLU6
    head.params += fc + cfg.fc_channel
    head.converted_params += fc + cfg.fc_channel
    if cfg.num_classes > 0:
        cls = cfg.fc_channel * cfg.num_classes
        head.flops += cls
        head.params += cls + cfg.num_classes
        head.converted_params += cls + cfg.num_classes
    layers.append(head)

    total = sum_counts(layers)
    ex = {k: total.extras.get(k, 0) for k in EXTRA_KEYS}
    ex["executed_total_ours"] = total.flops + ex["lgc_index_select"] + ex["sfr_scatter_add"] + ex["se_scale"]
    ex["executed_total_official"] = (total.flops + ex["lgc_index_select"] + ex["sfr_dense_matmul_macs"]
                                     + ex["residual_add"] + ex["se_scale"])
    return FlopsReport(
        name=name, form=form, input_size=cfg.input_size if input_size is None else int(input_size),
        flops=total.flops, params=total.params if form == "train" else total.converted_params,
        official_params=total.params, converted_params=total.converted_params, executed=ex, layers=layers)


def conv_macs(cfg: Union[str, CondenseNetV2Config, Mapping], input_size: Optional[int] = None) -> float:
    """MACs of the convolutions alone (stem, condensed LGC, grouped 3x3, condensed SFR)."""
    cfg, _, _ = resolve(cfg)
    size = _conv_out(cfg.input_size if input_size is None else int(input_size), 3, cfg.init_stride, 1)
    channels = 2 * cfg.growth[0]
    total = 3 * channels * 9 * size * size
    for i, (depth, k) in enumerate(zip(cfg.stages, cfg.growth)):
        hw = size * size
        for j in range(depth):
            cin = channels + j * k
            width = cfg.bottleneck * k
            total += cin * width * hw / cfg.condense_factor + width * k * 9 * hw / cfg.group_3x3
            total += k * cin * hw / cfg.trans_factor
        channels += depth * k
        if i != len(cfg.stages) - 1:
            size = _conv_out(size, 2, 2)
    return total


def _dense_layer_v1(cfg: CondenseNetConfig, cin: int, k: int, hw: int, converted: bool) -> LayerCount:
    width = cfg.bottleneck * k
    lc = LayerCount("layer")
    # conv_1 (LGC): the training model counts BN/ReLU over all cin inputs, the converted one over the
    # cin * G / C channels it gathers; the conv is cin * width / C either way.
    gathered = cin * cfg.group_1x1 // cfg.condense_factor
    seen = gathered if converted else cin
    lc.flops += seen * hw + cin * width * hw / cfg.condense_factor
    lc.params += 2 * cin + cin * width / cfg.condense_factor
    lc.converted_params += 2 * gathered + gathered * width // cfg.group_1x1
    lc.extras["lgc_index_select"] = gathered * hw
    # conv_2: BN → ReLU → grouped 3x3, width → k, same size.
    conv2 = width * k * 9 // cfg.group_3x3
    lc.flops += width * hw + conv2 * hw
    lc.params += 2 * width + conv2
    lc.converted_params += 2 * width + conv2
    return lc


def count_flops_v1(cfg: Union[str, CondenseNetConfig, Mapping], form: Optional[str] = None,
                   input_size: Optional[int] = None) -> FlopsReport:
    """Count a CondenseNet (V1) per image in ``form`` (default: ``converted`` for ``converted_*`` names)."""
    cfg, name, form = resolve(cfg, form, CondenseNetConfig)
    converted = form == "converted"
    size = cfg.input_size if input_size is None else int(input_size)
    report_size = size

    layers, channels, size = count_trunk(
        cfg, size, lambda block, cin, k, hw: _dense_layer_v1(cfg, cin, k, hw, converted))
    check_final_pool(cfg, size, channels, "the classifier")
    head = LayerCount("head", params=2 * channels, converted_params=2 * channels)
    head.flops += channels * size * size + channels * cfg.pool_size * cfg.pool_size  # relu_last, pool_last
    if cfg.num_classes > 0:
        kept = cfg.classifier_features
        dense, condensed = (channels + 1) * cfg.num_classes, (kept + 1) * cfg.num_classes
        head.flops += condensed if converted else dense
        head.params += dense
        head.converted_params += condensed
        head.extras["classifier_index_select"] = kept
    layers.append(head)

    total = sum_counts(layers)
    executed = {k: total.extras.get(k, 0) for k in ("lgc_index_select", "classifier_index_select")}
    executed["executed_total_ours"] = total.flops + (sum(executed.values()) if converted else 0)
    return FlopsReport(name=name, form=form, input_size=report_size, flops=total.flops,
                       params=total.converted_params if converted else total.params,
                       official_params=total.params, converted_params=total.converted_params,
                       executed=executed, layers=layers)
