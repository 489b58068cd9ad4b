"""The GFNet fixtures of ``../shared/fixtures/gfnet`` for the tests: configuration, one batch of the official
code's per-step outputs, and the weights rebuilt by the fixtures' own ``rule.py`` (numpy only)."""
from __future__ import annotations

import functools
import importlib.util
import json

import numpy as np

from conftest import SHARED_FIXTURES, fixture_path

GFNET = SHARED_FIXTURES / "gfnet"
CONFIGS = ("resnet50_p96_t5", "resnet50_p128_t5", "densenet121_p96_t5", "densenet169_p96_t5", "densenet201_p96_t5",
           "regnety_600m_p96_t5", "regnety_800m_p96_t5", "regnety_1.6g_p96_t5", "mobilenetv3_large_100_p96_t3",
           "mobilenetv3_large_100_p128_t3", "mobilenetv3_large_125_p128_t3", "efficientnet_b2_p128_t4",
           "efficientnet_b3_p128_t4", "efficientnet_b3_p144_t4")


@functools.lru_cache(maxsize=None)
def rule():
    """The fixtures' weight rule, imported from its file (never copied into the repo)."""
    path = fixture_path("rule.py", "gfnet")
    spec = importlib.util.spec_from_file_location("gfnet_fixture_rule", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def description(name: str) -> dict:
    return json.loads(fixture_path(f"{name}_s0.json", "gfnet").read_text())


def io(name: str) -> dict:
    return dict(np.load(fixture_path(f"{name}_s0_io.npz", "gfnet")))


def budget(name: str) -> dict:
    return dict(np.load(fixture_path(f"{name}_s0_budget.npz", "gfnet")))


def weights(name: str, component: str, strip_module: bool = True) -> dict:
    """One checkpoint component (``model_prime_state_dict``, ``model_state_dict``, ``fc``, ``policy``) as
    numpy arrays in upstream's torch layout, exactly the checkpoint's tensors; ``module.`` stripped."""
    desc, data = description(name), None
    out = {}
    for key, shape, dtype, source in desc["state_dicts"][component]:
        if source == "npz":
            data = data if data is not None else io(name)
            value = data[f"bn/{component}/{key}"]
        else:
            value = rule().weight(component, key, tuple(shape), desc["seed"])
        value = np.asarray(value).astype(dtype, copy=False).reshape(shape)
        out[key[len("module."):] if strip_module and key.startswith("module.") else key] = value
    return out


def fields(name: str) -> dict:
    """The released file's non-tensor fields (``flops``, ``dynamic_threshold``, ...)."""
    return description(name)["checkpoint_fields"]


def thresholds(name: str) -> np.ndarray:
    t = fields(name)["dynamic_threshold"]
    return np.asarray(t["values"], dtype=t["dtype"]).reshape(t["shape"])


COMPONENTS = ("model_prime_state_dict", "model_state_dict", "fc", "policy")


def fixture_model(name: str):
    """``gfnet_<name>`` holding the fixture's weights, thresholds and flops record, in eval mode."""
    import ppcdnv2

    model = ppcdnv2.create_model(f"gfnet_{name}")
    model.load_components(**{k: weights(name, c) for k, c in zip(("model_prime", "model", "fc", "policy"), COMPONENTS)},
                          thresholds=thresholds(name), flops=fields(name)["flops"])
    return model.eval()
