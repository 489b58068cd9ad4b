"""Our Paddle model against the official PyTorch code's own outputs (../shared/fixtures/official)."""
import numpy as np
import paddle
import pytest

import ppcdnv2
from ppcdnv2.convert import official_state_to_model
from ppcdnv2.families.condensenet import CondenseNetV2Config
from ppcdnv2.weights import adapt_state_dict, load_state_dict, state_dict_numpy

TOL = 1e-4


def _logits(model, x):
    model.eval()
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


def test_converted_checkpoint_reproduces_official_logits(official_checkpoints, official_io):
    model = ppcdnv2.create_model("converted_cdnv2_a")
    load_state_dict(model, official_state_to_model(official_checkpoints["converted"], model))
    diff = np.abs(_logits(model, official_io["x"]) - official_io["converted"]).max()
    assert diff <= TOL, diff


@pytest.mark.parametrize("key,expected", [("state_dict", "unconverted"), ("state_dict_ema", "unconverted_ema")])
def test_training_form_and_its_condensation_reproduce_official_logits(official_checkpoints, official_io, key, expected):
    model = ppcdnv2.create_model("cdnv2_a")
    load_state_dict(model, official_state_to_model(official_checkpoints[key], model))
    diff = np.abs(_logits(model, official_io["x"]) - official_io[expected]).max()
    assert diff <= TOL, diff
    condensed = ppcdnv2.condense(model)
    diff = np.abs(_logits(condensed, official_io["x"]) - official_io[expected]).max()
    assert diff <= TOL, diff


def test_condense_equals_official_conversion_exactly(official_checkpoints):
    """Same channel placement as the official convert_model: indexes equal, weights bit-equal."""
    model = ppcdnv2.create_model("cdnv2_a")
    load_state_dict(model, official_state_to_model(official_checkpoints["state_dict_ema"], model))
    ours = state_dict_numpy(ppcdnv2.condense(model))
    target = ppcdnv2.create_model("converted_cdnv2_a")
    official = adapt_state_dict(target, official_state_to_model(official_checkpoints["converted"], target))
    assert sorted(ours) == sorted(official)
    for k in ours:
        np.testing.assert_array_equal(ours[k], official[k].astype(ours[k].dtype), err_msg=k)


def test_official_keys_map_one_to_one(official_checkpoints):
    """Every official key has a home after the framework renames, and nothing is left over."""
    for form, sd in (("train", official_checkpoints["state_dict"]), ("converted", official_checkpoints["converted"])):
        model = ppcdnv2.build_condensenetv2("cdnv2_a", form=form)
        official = {k for k in sd if not k.endswith("num_batches_tracked")}
        renamed = {k.replace("running_mean", "_mean").replace("running_var", "_variance") for k in official}
        assert renamed == set(model.state_dict()), form


def test_config_from_official_namespace(official_checkpoints):
    assert CondenseNetV2Config.from_official_args(official_checkpoints["args"]) == ppcdnv2.preset("cdnv2_a")
