"""GFNet's torchvision-layout backbones (ResNet-50, DenseNet-121/169/201): the torch references and the Paddle
ports reproduce the official GFNet code's per-step backbone outputs stored in the fixtures.

Step 0 is the glance (``model_prime`` on ``io['prime']``); step 1 is the first focus (``model`` on the patch of
``x`` at ``coords[0]``: row = height offset, column = width offset, side P). Both the pooled vector
(``features``) and the feature map the policy reads (``fmaps``) are compared, to 1e-4 of their scale; the
backbone's own head (``classify``) is checked against the stored ``fc`` / ``classifier`` weights.
"""
import functools

import numpy as np
import pytest

from gfnet_fixtures import description, io, weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ("resnet50_p96_t5", "resnet50_p128_t5", "densenet121_p96_t5", "densenet169_p96_t5", "densenet201_p96_t5")
COMPONENTS = {0: "model_prime_state_dict", 1: "model_state_dict"}
TOL = 1e-4


@functools.lru_cache(maxsize=1)
def _weights(name, component):
    return weights(name, component)


@functools.lru_cache(maxsize=1)
def _io(name):
    return io(name)


def _config(name):
    return description(name)["config"]


def _step_input(name, step):
    """The backbone input of ``step`` as upstream builds it: the glance image, or the patch at coords[step-1]."""
    data, p = _io(name), _config(name)["patch_size"]
    if step == 0:
        return data["prime"]
    x, coords = data["x"], data["coords"][step - 1]
    patches = [x[i, :, r:r + p, c:c + p] for i, (r, c) in enumerate(coords)]
    assert all(q.shape[1:] == (p, p) for q in patches), "coordinates out of range"
    return np.ascontiguousarray(np.stack(patches))


def _rel(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got.astype(np.float64) - want).max() / want.std())


def _torch_model(name, step):
    import torch

    from ppcdnv2.families.gfnet.reference import build_reference_backbone

    state = _weights(name, COMPONENTS[step])
    model = build_reference_backbone(_config(name)["model_name"]).eval()
    assert list(model.state_dict()) == list(state), "key layout differs from upstream's"
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    return model


def _paddle_model(name, step):
    from ppcdnv2.convert.keymap import torch_to_paddle_state
    from ppcdnv2.families.gfnet.backbones import build_backbone
    from ppcdnv2.weights import load_state_dict

    model = build_backbone(_config(name)["model_name"])
    model.eval()
    return load_state_dict(model, torch_to_paddle_state(_weights(name, COMPONENTS[step]), model), strict=True)


def _run_torch(model, x, head=False):
    import torch

    with torch.no_grad():
        out = model.classify(torch.from_numpy(x)) if head else model(torch.from_numpy(x))
    return out.numpy() if head else tuple(o.numpy() for o in out)


def _run_paddle(model, x, head=False):
    import paddle

    with paddle.no_grad():
        out = model.classify(paddle.to_tensor(x)) if head else model(paddle.to_tensor(x))
    return out.numpy() if head else tuple(o.numpy() for o in out)


# framework varies fastest so that both use the same cached weights
CASES = [pytest.param(name, step, fw, id=f"{name}-step{step}-{fw}")
         for name in NAMES for step in (0, 1) for fw in ("torch", "paddle")]


@pytest.mark.parametrize("name,step,framework", CASES)
def test_backbone_matches_upstream(name, step, framework):
    cfg, data = _config(name), _io(name)
    model, run = (_torch_model, _run_torch) if framework == "torch" else (_paddle_model, _run_paddle)
    model = model(name, step)
    vec, fmap = run(model, _step_input(name, step))
    assert (model.feature_num, model.fmap_channels) == (cfg["feature_num"], cfg["feature_map_channels"])
    k = -(-cfg["patch_size"] // 32)
    assert fmap.shape == (2, cfg["feature_map_channels"], k, k)
    assert _rel(vec, data["features"][step]) < TOL
    assert _rel(fmap, data["fmaps"][step]) < TOL

    # classify: the backbone's own head (fc / classifier; not part of forward) on the vector, [B, 1000]
    state, head = _weights(name, COMPONENTS[step]), "fc" if name.startswith("resnet") else "classifier"
    want = data["features"][step].astype(np.float64) @ state[f"{head}.weight"].T.astype(np.float64)
    want += state[f"{head}.bias"]
    logits = run(model, data["features"][step], head=True)
    assert logits.shape == (2, 1000)
    assert _rel(logits, want) < TOL


@pytest.mark.parametrize("arch,side,k", [("resnet50", 224, 7), ("densenet121", 100, 3)])
def test_paddle_any_input_size(arch, side, k):
    """Adaptive pooling: any input side works and the vector is the spatial mean of the returned map."""
    import paddle

    from ppcdnv2.families.gfnet.backbones import build_backbone

    paddle.seed(0)
    model = build_backbone(arch)
    model.eval()
    x = np.random.default_rng(0).standard_normal((1, 3, side, side)).astype(np.float32)
    vec, fmap = _run_paddle(model, x)
    assert vec.shape == (1, model.feature_num) and fmap.shape[:2] == (1, model.fmap_channels)
    assert fmap.shape[2:] == (k, k)  # DenseNet's 2x2 average pools floor odd sides (100 -> 25 -> 12 -> 6 -> 3)
    assert _rel(vec, fmap.mean(axis=(2, 3))) < 1e-5
    assert fmap.min() >= 0  # both maps end in a ReLU
