"""Glance-and-Focus CondenseNetV2 (ours; upstream GFNet has no CondenseNet backbone): CondenseNetV2 A/B/C as
GFNet encoders with the widths the issue fixes, trained in the training form and condensed (both encoders)
into a model with the same outputs, which saves, loads and counts as its own ``converted_`` model."""
import numpy as np
import paddle
import pytest

import ppcdnv2
from ppcdnv2.families.gfnet import GFNet
from ppcdnv2.families.gfnet.backbones import build_backbone


@pytest.mark.parametrize("name, vector, channels", [("cdnv2_a", 828, 800), ("cdnv2_b", 1024, 1176),
                                                    ("cdnv2_c", 1024, 2064)])
@pytest.mark.parametrize("patch, side", [(96, 3), (128, 4)])
def test_encoder_outputs_vector_and_map(name, vector, channels, patch, side):
    enc = build_backbone(name).eval()
    with paddle.no_grad():
        vec, fmap = enc(paddle.rand([2, 3, patch, patch]))
    assert vec.shape == [2, vector] and fmap.shape == [2, channels, side, side]
    assert (enc.feature_num, enc.fmap_channels) == (vector, channels)
    assert enc.classify(vec).shape == [2, 1000]
    # the same keys as the CondenseNetV2 classifier: ImageNet weights of cdnv2_* start GFNet training as they are
    assert set(enc.state_dict()) == set(ppcdnv2.create_model(name).state_dict())


def _randomize(model, seed=0):
    """Every parameter and BatchNorm statistic random (default inits hide bugs), activations kept sane."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        shape = p.shape
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
            v = rng.normal(0, 1 / np.sqrt(fan_in), shape)
        elif name.endswith("weight"):
            v = 1 + 0.2 * rng.standard_normal(shape)
        else:
            v = 0.1 * rng.standard_normal(shape)
        p.set_value(v.astype("float32"))
    for name, b in model.named_buffers():
        if name.endswith("_mean"):
            b.set_value((0.1 * rng.standard_normal(b.shape)).astype("float32"))
        elif name.endswith("_variance"):
            b.set_value(rng.uniform(0.5, 1.5, b.shape).astype("float32"))


def test_condensed_gfnet_gives_the_training_forms_outputs(tmp_path):
    from ppcdnv2.weights import save_weights, state_dict_numpy

    model = ppcdnv2.create_model("gfnet_cdnv2_a_p96_t3")
    _randomize(model)
    model.eval()
    with paddle.no_grad():  # past half-way: every condensation stage reached, masks final
        for enc in (model.model_prime, model.model):
            enc(paddle.rand([1, 3, 96, 96]), progress=0.7)
    x = paddle.to_tensor(np.random.default_rng(1).standard_normal((3, 3, 224, 224)).astype("float32"))
    condensed = ppcdnv2.condense(model)
    assert isinstance(condensed, GFNet) and condensed.form == "converted"
    assert condensed.model_prime.form == condensed.model.form == "converted"
    with paddle.no_grad():
        want, got = model.glance_and_focus(x), condensed.glance_and_focus(x)
    scale = float(want.logits.std())
    assert float((want.logits - got.logits).abs().max()) / scale < 1e-4
    np.testing.assert_array_equal(want.coords.numpy(), got.coords.numpy())
    for enc in ("model_prime", "model"):  # the encoders did shrink
        size = [sum(int(np.prod(p.shape)) for p in getattr(m, enc).features.parameters()) for m in (model, condensed)]
        assert size[1] < 0.6 * size[0]

    path = tmp_path / "gf_converted.pdparams"
    save_weights(state_dict_numpy(condensed), path)
    loaded = ppcdnv2.create_model("converted_gfnet_cdnv2_a_p96_t3", pretrained=str(path)).eval()
    with paddle.no_grad():
        again = loaded.glance_and_focus(x)
    np.testing.assert_array_equal(again.logits.numpy(), got.logits.numpy())
    family = ppcdnv2.get_family("gfnet")
    assert family.form_of(state_dict_numpy(condensed)) == "converted"
    assert family.form_of(state_dict_numpy(model)) == "train"


def test_only_condensenetv2_gfnets_have_a_converted_form():
    names = ppcdnv2.list_models("gfnet")
    assert "converted_gfnet_cdnv2_c_p128_t3" in names and "converted_gfnet_resnet50_p96_t5" not in names
    with pytest.raises(ValueError, match="one form"):
        ppcdnv2.condense(ppcdnv2.create_model("gfnet_mobilenetv3_large_100_p96_t3"))


def test_step_macs_count_the_condensed_encoders():
    from ppcdnv2.families.gfnet import PRESETS, cumulative_macs
    from ppcdnv2.macs import count_macs

    cfg = PRESETS["cdnv2_a_p96_t3"]
    enc = build_backbone("cdnv2_a", form="converted").eval()
    backbone = count_macs(enc, paddle.zeros([1, 3, 96, 96]))["total"]
    steps = cumulative_macs(cfg)
    assert steps[0] == backbone + 828 * 1000  # glance + the backbone's classifier
    # each focus step: policy (1x1 conv to 32, Linear(32*9, 256), GRU(256, 256), actor) + encoder + fc_{t+1}
    policy = 800 * 32 * 9 + 32 * 9 * 256 + 3 * (256 * 256 * 2) + 256 * 2
    assert steps[1] - steps[0] == policy + backbone + 2 * 828 * 1000
    assert steps[2] - steps[1] == policy + backbone + 3 * 828 * 1000


def test_a_small_condensenetv2_through_backbone_arch():
    """A custom (e.g. demo-sized) CondenseNetV2: the widths follow from its architecture, the config survives
    a dict (YAML) round trip, and what cannot work is refused by name."""
    from ppcdnv2.families.gfnet import PRESETS, GFNetConfig

    arch = {"stages": [1, 1, 2, 2, 2], "growth": [8, 8, 16, 16, 32], "fc_channel": 64}
    cfg = PRESETS["cdnv2_a_p96_t3"].replace(backbone_arch=arch, num_classes=10, image_size=128, patch_size=64)
    assert (cfg.feature_num, cfg.fmap_channels) == (64, 2 * 8 + 8 + 8 + 32 + 32 + 64)
    assert GFNetConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["backbone_arch"] == arch
    model = ppcdnv2.get_family("gfnet").build(cfg).eval()
    with paddle.no_grad():
        r = model.glance_and_focus(paddle.rand([2, 3, 128, 128]))
    assert r.logits.shape == [3, 2, 10] and r.fmaps[0].shape == [2, cfg.fmap_channels, 2, 2]
    with pytest.raises(ValueError, match="divisible by 32"):
        cfg.replace(patch_size=48)
    with pytest.raises(ValueError, match="backbone_arch is for the CondenseNetV2"):
        PRESETS["resnet50_p96_t5"].replace(backbone_arch={"stages": [1]})
    with pytest.raises(ValueError, match="unknown CondenseNetV2 config field"):
        cfg.replace(backbone_arch={"stagez": [1]})
    # the policy reads a ceil(P / 32)-sided map: a stride-1 stem or 4 dense blocks would give another size
    with pytest.raises(ValueError, match=r"downsample by 32, but backbone_arch gives 16 \(stem 'cifar'"):
        cfg.replace(backbone_arch=dict(arch, stem="cifar"))
    with pytest.raises(ValueError, match=r"gives 16 \(stem 'imagenet', 4 dense blocks\)"):
        cfg.replace(backbone_arch={"stages": [1, 1, 2, 2], "growth": [8, 8, 16, 16], "fc_channel": 64})
