"""GFNet in the registry: the 14 released configurations as ``gfnet_<config>`` models, their evaluation
metadata, per-step multiply-adds, the torch reference, and how the converter reads released checkpoints.

A released GFNet file is not one state dict but four (``model_prime_state_dict``, ``model_state_dict``,
``fc``, ``policy``) plus fields (``model_name``, ``patch_size``, ``dynamic_threshold``, ``flops``, ...).
:meth:`GFNetFamily.unpack_checkpoint` flattens it into one state in the torch layout of our model's names
(``model_prime.*``, ``model.*``, ``fc.*``, ``policy.*``, ``thresholds``, ``flops``), so detection, key
mapping, strict loading and ``--verify`` are the generic ones; the configuration comes from the file's
``model_name``/``patch_size`` (its "args"), or from the shapes.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import numpy as np

from ...registry import Family, WeightsInfo, register_family
from .config import N_BUDGETS, PRESETS as CONFIGS, GFNetConfig

PREFIX = "gfnet_"
COMPONENTS = {"model_prime_state_dict": "model_prime", "model_state_dict": "model", "fc": "fc", "policy": "policy"}
# the checkpoint's budget data and evaluation record, kept as model buffers
BUFFERS = ("thresholds", "flops", "component_flops", "anytime_classification", "budgeted_batch_classification")


class GFNetFamily(Family):
    name = "gfnet"
    title = "GFNet"
    config_class = GFNetConfig
    presets = {PREFIX + name: cfg for name, cfg in CONFIGS.items()}
    # "converted": both encoders condensed; only GFNets on CondenseNetV2 have it (``converted_gfnet_cdnv2_*``)
    forms = ("train", "converted")
    condensable = True
    layouts = ()  # released files are read; writing them back is not done
    torch_container = None
    exportable = False  # data-dependent crops: deployed as the dygraph model
    single_output = False  # logits of every step [T, B, classes]; predict() exits early

    # --- models ------------------------------------------------------------------------------
    def model_class(self):
        from .model import GFNet

        return _GFNetBuilder(GFNet)

    def weights_info(self, cfg) -> WeightsInfo:
        # upstream's evaluation: shorter side to int(W / crop_pct), centre crop W, ImageNet statistics
        return WeightsInfo(resize=cfg.resize_size, crop=cfg.image_size,
                           interpolation=cfg.dataset_interpolation.lower())

    def classifier_of(self, cfg) -> str:
        return "fc"

    def forms_of(self, cfg):
        from .backbones import CONDENSABLE

        return self.forms if cfg.backbone in CONDENSABLE else ("train",)

    def condense(self, model):
        """Both encoders condensed (``ppcdnv2.condense`` of each); the classifier, policy and budget data as
        they are. For GFNets on CondenseNetV2 trained until fully condensed."""
        from ...condense import condense_model
        from .backbones import CONDENSABLE
        from .model import GFNet

        if model.cfg.backbone not in CONDENSABLE:
            raise ValueError(f"a GFNet on {model.cfg.backbone} has one form; only {', '.join(CONDENSABLE)} condense")
        out = GFNet.from_parts(model.cfg, condense_model(model.model_prime), condense_model(model.model),
                               form="converted")
        rest = {k: v for k, v in model.state_dict().items() if not k.startswith(("model_prime.", "model."))}
        out.set_state_dict(rest)
        return out.train(model.training)

    def form_of(self, state):
        """Condensed encoders carry the ``index`` buffers of their condensed layers; nothing else here does."""
        encoders = ("model_prime.", "model.")
        return "converted" if any(k.startswith(encoders) and k.endswith(".index") for k in state) else "train"

    def count_flops(self, cfg, form="train", input_size=None):
        from ...flops import FlopsReport, LayerCount

        parts = step_macs(cfg)
        steps = cumulative_macs(cfg, parts)
        layers = [LayerCount(name, float(v)) for name, v in
                  (("global encoder", parts["model"]), ("policy", parts["policy"]), ("classifier", parts["fc"]),
                   ("local encoder", parts["model"]), ("backbone head", parts["head"]))]
        executed = {f"up to step {t}": float(v) for t, v in enumerate(steps)}
        params = float(sum(int(np.prod(p.shape)) for p in self.build(cfg, form).parameters()))
        return FlopsReport(name=self.describe(cfg), form=form, input_size=cfg.image_size, flops=float(steps[-1]),
                           params=params, official_params=params, converted_params=int(params), executed=executed,
                           layers=layers, form_pair=False,
                           counting="conv/linear/GRU multiply-adds of all T steps, as upstream counts",
                           executed_title="multiply-adds spent to reach each step's prediction (M per image):")

    def build_reference(self, cfg, form):
        from .reference.gfnet import GFNetReference

        return GFNetReference(cfg)

    # --- converter ---------------------------------------------------------------------------
    def unpack_checkpoint(self, obj, where: str):
        from .checkpoint import GFNetCheckpointError, is_gfnet_checkpoint, parse_gfnet_checkpoint

        if not is_gfnet_checkpoint(obj):
            return None
        ck = parse_gfnet_checkpoint(obj, where)
        state: Dict[str, np.ndarray] = {}
        for field, prefix in COMPONENTS.items():
            for key, value in (getattr(ck, field) or {}).items():
                state[f"{prefix}.{key}"] = value
        T = ck.T
        thresholds = ck.dynamic_threshold
        state["thresholds"] = (np.asarray(thresholds, np.float32) if thresholds is not None
                               else np.full([N_BUDGETS, T or 1], np.nan, np.float32))
        steps = state["thresholds"].shape[1]
        state["flops"] = np.asarray(ck.flops, np.float64) if ck.flops is not None else np.full([steps], np.nan)
        parts = (ck.model_flops, ck.policy_flops, ck.fc_flops)
        state["component_flops"] = np.asarray([np.nan if v is None else v for v in parts], np.float64)
        state["anytime_classification"] = (np.asarray(ck.anytime_classification, np.float64)
                                           if ck.anytime_classification is not None else np.full([steps], np.nan))
        budgeted = ck.budgeted_batch_classification
        if budgeted is not None and len(budgeted[0]) != N_BUDGETS:
            raise GFNetCheckpointError(f"{where}: field 'budgeted_batch_classification' has {len(budgeted[0])} "
                                       f"budgets, a released GFNet has {N_BUDGETS}")
        state["budgeted_batch_classification"] = (np.asarray(budgeted, np.float64) if budgeted is not None
                                                  else np.full([2, N_BUDGETS], np.nan))
        args = {"model_name": ck.model_name, "patch_size": ck.patch_size, "T": T}
        return state, f"released GFNet ({ck.kind})", args

    def claims(self, keys) -> bool:
        keys = set(keys)
        return any(k.startswith("model_prime.") for k in keys) and any(k.startswith("policy.") for k in keys)

    def config_from_args(self, args):
        if not isinstance(args, Mapping) or not args.get("model_name") or not args.get("patch_size"):
            return None
        for cfg in CONFIGS.values():
            if cfg.backbone == args["model_name"] and cfg.patch_size == int(args["patch_size"]) and \
                    (not args.get("T") or cfg.T == int(args["T"])):
                return cfg
        return None

    def infer_config(self, state, layout, form):
        """The preset whose (feature width, feature-map side) the shapes show: unique among the 14."""
        torch_side = layout == "torch"

        def linear_in(key):  # Linear weight: torch [out, in], Paddle [in, out]
            return int(np.shape(state[key])[1 if torch_side else 0])

        if "fc.rnn.weight_ih_l0" in state:
            feature_num = int(np.shape(state["fc.rnn.weight_ih_l0"])[1])
        else:
            feature_num = linear_in("fc.fc_2.weight") // 2
        if "policy.state_encoder.3.weight" in state:  # conv encoder: Conv(C, 32, 1) then Linear(32 k^2, H)
            channels = int(np.shape(state["policy.state_encoder.0.weight"])[1])
            side2 = linear_in("policy.state_encoder.3.weight") // 32
        else:  # linear encoder: Linear(C k^2, 2048), C = feature width for ResNet/DenseNet
            channels = feature_num
            side2 = linear_in("policy.state_encoder.0.weight") // feature_num
        T = int(np.shape(state["thresholds"])[1]) if "thresholds" in state else None
        for cfg in CONFIGS.values():
            if (cfg.feature_num, cfg.fmap_channels, cfg.fmap_side ** 2) == (feature_num, channels, side2) \
                    and T in (None, cfg.T):
                return cfg, []
        raise ValueError(f"no released GFNet has {feature_num} features and a {channels}-channel "
                         f"{side2 ** 0.5:g}x{side2 ** 0.5:g} map")

    def official_for_reference(self, state: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return {k: v for k, v in state.items() if k not in BUFFERS}


class _GFNetBuilder:
    """``GFNet`` called the registry's way (``cls(cfg, form=..., features_only=...)``)."""

    def __init__(self, cls):
        self.cls = cls

    def __call__(self, cfg, form: str = "train", features_only: bool = False):
        if features_only:
            raise ValueError("GFNet has no features_only form; use its backbones (ppcdnv2.families.gfnet.backbones)")
        model = self.cls(cfg, form=form)
        model.features_only = False  # what generic code asks of every model
        return model


def step_macs(cfg: GFNetConfig) -> Dict[str, float]:
    """Multiply-adds of one call of each part (upstream's counting: conv, linear and GRU layers, per image):
    ``model`` (an encoder on a P x P input), ``policy`` (state encoder + GRU + actor), ``fc`` (GRU + Linear, or
    for the cascade the mean over steps of ``fc_{t+1}`` with none at step 0, as upstream's ``fc_flops``),
    ``head`` (the backbone's own classifier, step 0 of RegNet/MobileNetV3/EfficientNet)."""
    import paddle

    from ...macs import count_macs, gru_macs
    from .backbones import CONDENSABLE, build_backbone

    # as deployed: CondenseNetV2 encoders condensed (the training form's masked convs are not what runs)
    backbone = build_backbone(cfg.backbone, cfg.num_classes, "converted" if cfg.backbone in CONDENSABLE else "train",
                              cfg.backbone_arch).eval()
    model = count_macs(backbone, paddle.zeros([1, 3, cfg.patch_size, cfg.patch_size]))["total"]
    head = count_macs(backbone, paddle.zeros([1, cfg.feature_num]), run=lambda v: backbone.classify(v))["total"]
    h, k = cfg.policy_hidden_dim, cfg.fmap_side
    if cfg.policy_conv:
        encoder = cfg.fmap_channels * 32 * k * k + 32 * k * k * h
    else:
        encoder = cfg.state_dim * 2048 + 2048 * h
    policy = encoder + gru_macs(h, h) + h * 2
    if cfg.fc_rnn:
        fc = gru_macs(cfg.feature_num, cfg.fc_hidden) + cfg.fc_hidden * cfg.num_classes
    else:
        fc = sum(_cascade(cfg, t) for t in range(cfg.T)) / cfg.T
    return {"model": model, "policy": policy, "fc": fc, "head": head if cfg.step0 == "backbone" else 0}


def _cascade(cfg: GFNetConfig, t: int) -> int:
    return 0 if t == 0 else (t + 1) * cfg.feature_num * cfg.num_classes


def cumulative_macs(cfg: GFNetConfig, parts: Optional[Dict[str, float]] = None) -> List[float]:
    """Multiply-adds spent to reach each step's prediction (upstream's ``flops`` list, in MACs)."""
    parts = parts or step_macs(cfg)
    gru = parts["fc"] if cfg.fc_rnn else 0
    total = parts["model"] + parts["head"] + (gru if cfg.fc_rnn else 0)
    out = [total]
    for t in range(1, cfg.T):
        total += parts["policy"] + parts["model"] + (gru if cfg.fc_rnn else _cascade(cfg, t))
        out.append(total)
    return out


GFNET = register_family(GFNetFamily())
