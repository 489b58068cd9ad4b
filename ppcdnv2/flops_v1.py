"""FLOPs / parameter counts of a CondenseNet (V1), from its config alone, by the official counter's rules.

Upstream (ShichenLiu/CondenseNet ``utils.measure_model``) counts one multiply-add as one op; a
``LearnedGroupConv`` as its ReLU (one op per input element) plus its dense conv divided by the
condensation factor (params likewise, BN params included); a conv by its weights times output size;
ReLU one op per element; average pools every window element; a Linear its weights plus its bias;
BatchNorm only its parameters. The published tables use both forms: the CIFAR table was measured on
the training model (``main.py`` measures before training), the ImageNet one on the converted model
(measured after ``convert_model``), whose ``CondenseLinear`` reads only half of the features. Both
are reproduced: ``form="train"`` and ``form="converted"``. The converted model's channel gathers
(``index_select``) are invisible to that counter; ``executed`` lists them.
"""
from __future__ import annotations

from typing import Mapping, Optional, Union

from .flops import FlopsReport, LayerCount, check_final_pool, count_trunk, resolve, sum_counts
from .models.condensenet import PRESETS, CondenseNetConfig, preset

__all__ = ["count_flops_v1", "is_v1_config"]


def is_v1_config(cfg) -> bool:
    """True for a ``CondenseNetConfig``, a V1 preset name (``converted_`` or not) or a dict with V1-only keys."""
    if isinstance(cfg, CondenseNetConfig):
        return True
    if isinstance(cfg, str):
        return (cfg[len("converted_"):] if cfg.startswith("converted_") else cfg) in PRESETS
    if isinstance(cfg, Mapping):
        return bool({"dropout_rate", "classifier_keep"} & set(cfg))
    return False


def _dense_layer(cfg: CondenseNetConfig, cin: int, k: int, hw: int, converted: bool) -> LayerCount:
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
    cfg, name, form = resolve(cfg, form, CondenseNetConfig, preset, "a V1 preset name")
    converted = form == "converted"
    size = cfg.input_size if input_size is None else int(input_size)
    report_size = size

    layers, channels, size = count_trunk(
        cfg, size, lambda block, cin, k, hw: _dense_layer(cfg, cin, k, hw, converted))
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
