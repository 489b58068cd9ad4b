"""Strict loading: a state dict that does not fit the model fails loudly and names the offending key.

Paddle's own ``set_state_dict`` only warns about missing/unexpected keys; ``ppcdnv2.weights`` must not.
"""
import pickle

import numpy as np
import pytest

import ppcdnv2
from ppcdnv2.weights import (StateDictMismatchError, WeightsError, load_state_dict, save_weights,
                             state_dict_numpy)

SMALL = ppcdnv2.preset("cdnv2_a", stages=(1, 1, 1, 1, 1))  # every layer kind, quick to build
KEY = "features.denseblock_2.denselayer_1.conv_2.conv.weight"
LGC_INDEX = "features.denseblock_2.denselayer_1.conv_1.index"
SFR_INDEX = "features.denseblock_2.denselayer_1.sfr.index"


@pytest.fixture(scope="module")
def models():
    train = ppcdnv2.build_condensenetv2(SMALL)
    converted = ppcdnv2.build_condensenetv2(SMALL, form="converted")
    return train, converted


def fresh_state(model):
    return {k: v.copy() for k, v in state_dict_numpy(model).items()}


def test_exact_state_loads_and_is_really_written(models):
    train, _ = models
    state = fresh_state(train)
    state[KEY] = np.full_like(state[KEY], 0.25)
    load_state_dict(train, state)
    assert np.all(train.state_dict()[KEY].numpy() == 0.25)


def test_missing_key_is_named(models):
    train, _ = models
    state = fresh_state(train)
    del state[KEY]
    with pytest.raises(StateDictMismatchError, match="missing.*" + KEY) as e:
        load_state_dict(train, state)
    assert e.value.missing == [KEY]
    load_state_dict(train, state, strict=False)  # non-strict: allowed, the key keeps its value


def test_unexpected_key_is_named(models):
    train, _ = models
    state = fresh_state(train)
    state["features.denseblock_9.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(StateDictMismatchError, match="unexpected.*features.denseblock_9.extra.weight"):
        load_state_dict(train, state)


def test_wrong_shape_is_named_even_when_not_strict(models):
    train, _ = models
    state = fresh_state(train)
    good = state[KEY].shape
    state[KEY] = np.zeros((good[0] + 1,) + good[1:], np.float32)
    for strict in (True, False):
        with pytest.raises(StateDictMismatchError, match=KEY) as e:
            load_state_dict(train, state, strict=strict)
        assert e.value.shapes == [(KEY, (good[0] + 1,) + good[1:], good)]


def test_integer_index_given_floats_is_refused(models):
    _, converted = models
    state = fresh_state(converted)
    state[LGC_INDEX] = state[LGC_INDEX].astype(np.float32)
    with pytest.raises(WeightsError, match=LGC_INDEX + ".*integers"):
        load_state_dict(converted, state)


def test_sfr_index_official_dense_matrix_accepted_and_checked(models):
    _, converted = models
    state = fresh_state(converted)
    sfr = converted.features.denseblock_2.denselayer_1.sfr
    targets = np.random.RandomState(0).randint(0, sfr.out_channels, sfr.conv_channels)
    dense = np.zeros((sfr.conv_channels, sfr.out_channels), np.float32)
    dense[np.arange(targets.size), targets] = 1
    state[SFR_INDEX] = dense  # the official layout loads into the compact one
    load_state_dict(converted, state)
    np.testing.assert_array_equal(sfr.index.numpy(), targets)
    dense[0, :] = 1  # a row that maps one conv output onto every channel is not an SFR index
    with pytest.raises(ValueError, match=SFR_INDEX):
        load_state_dict(converted, state)


def test_lgc_forms_do_not_mix(models):
    """A training-form state dict in a converted model: every mismatch is reported, by name."""
    train, converted = models
    with pytest.raises(StateDictMismatchError) as e:
        load_state_dict(converted, fresh_state(train))
    assert any(k.endswith("._mask") for k in e.value.unexpected)
    assert LGC_INDEX in e.value.missing


@pytest.fixture(scope="module")
def saved_a(tmp_path_factory):
    """cdnv2_a weights written as .pdparams, and a few broken variants of them."""
    model = ppcdnv2.create_model("cdnv2_a")
    state = state_dict_numpy(model)
    root = tmp_path_factory.mktemp("weights")
    files = {"good": save_weights(state, root / "good.pdparams")}
    missing = dict(state)
    del missing["classifier.bias"]
    files["missing"] = save_weights(missing, root / "missing.pdparams")
    files["unexpected"] = save_weights({**state, "fc.extra": np.zeros(2, np.float32)}, root / "unexpected.pdparams")
    shape = dict(state)
    shape["fc.weight"] = shape["fc.weight"][:, :-1]
    files["shape"] = save_weights(shape, root / "shape.pdparams")
    return state, files


def test_create_model_pretrained_loads_exactly(saved_a):
    state, files = saved_a
    model = ppcdnv2.create_model("cdnv2_a", pretrained=str(files["good"]))
    for k, v in state_dict_numpy(model).items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)


@pytest.mark.parametrize("case,key", [("missing", "classifier.bias"), ("unexpected", "fc.extra"),
                                      ("shape", "fc.weight")])
def test_create_model_pretrained_names_the_bad_key_and_file(saved_a, case, key):
    _, files = saved_a
    with pytest.raises(StateDictMismatchError, match=key) as e:
        ppcdnv2.create_model("cdnv2_a", pretrained=str(files[case]))
    assert files[case].name in str(e.value)


def test_create_model_new_classes_skips_only_the_classifier(saved_a):
    state, files = saved_a
    model = ppcdnv2.create_model("cdnv2_a", pretrained=str(files["good"]), num_classes=10)
    assert tuple(model.classifier.weight.shape) == (828, 10)
    np.testing.assert_array_equal(model.fc.weight.numpy(), state["fc.weight"])
    with pytest.raises(StateDictMismatchError, match="fc.weight"):
        ppcdnv2.create_model("cdnv2_a", pretrained=str(files["shape"]), num_classes=10)


def test_pdparams_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pdparams"
    path.write_bytes(pickle.dumps({"fc.weight": Evil()}))
    with pytest.raises(WeightsError, match="refusing to load builtins.print"):
        ppcdnv2.create_model("cdnv2_a", pretrained=str(path))


def test_paddle_save_files_load_and_saved_files_keep_shapes_and_permissions(tmp_path):
    """``paddle.save`` adds a name table beside the weights: not a weight, skipped; our writer keeps 0-d
    arrays 0-d (``np.ascontiguousarray`` would make them 1-d) and gives files the user's usual permissions."""
    import os

    import paddle

    from ppcdnv2.weights import load_pretrained, read_paddle_weights

    model = ppcdnv2.build_condensenetv2(SMALL, form="converted")
    paddle.save(model.state_dict(), str(tmp_path / "saved.pdparams"))
    twin = load_pretrained(ppcdnv2.build_condensenetv2(SMALL, form="converted"), tmp_path / "saved.pdparams")
    for k, v in state_dict_numpy(model).items():
        np.testing.assert_array_equal(state_dict_numpy(twin)[k], v)

    old = os.umask(0o022)
    try:
        save_weights({"scalar": np.float32(3.0), "vec": np.arange(4)[::2]}, tmp_path / "w.pdparams")
    finally:
        os.umask(old)
    back = read_paddle_weights(tmp_path / "w.pdparams")
    assert back["scalar"].shape == () and back["vec"].tolist() == [0, 2]
    assert (tmp_path / "w.pdparams").stat().st_mode & 0o777 == 0o644
