"""tools/convert_torch_weights.py end to end: official fixtures → Paddle logits, torch-free, errors, both ways."""
import json
import re

import numpy as np
import pytest

import ppcdnv2
from conftest import fixture_path
from helpers_convert import (paddle_logits, random_converted_state, read_official, resave_official,
                             run_cli_without_torch)
from ppcdnv2.convert.api import convert_torch_checkpoint
from ppcdnv2.families.condensenet import CondenseNetV2Family
from ppcdnv2.convert.cli import main
from ppcdnv2.registry import find_family
from ppcdnv2.convert.torch_file import load_torch_file
from ppcdnv2.convert.torch_writer import save_torch_file
from ppcdnv2.families.condensenet import CondenseNetV2Config
from ppcdnv2.weights import load_state_dict, read_weights, save_weights, state_dict_numpy

TOL = 1e-4
CONV, UNCONV = "cdnv2_a_s0_converted.pth.tar", "cdnv2_a_s0_unconverted.pth.tar"

# variant file -> how the test re-saves an official fixture (None: the fixture as it is)
VARIANTS = {
    "conv": (CONV, None),
    "unconv": (UNCONV, None),
    "conv_legacy.pth": (CONV, dict(legacy=True)),
    "unconv_legacy.pth.tar": (UNCONV, dict(legacy=True)),
    "conv_module_bare.pth": (CONV, dict(prefix=True, bare=True)),
    "unconv_module.pth.tar": (UNCONV, dict(prefix=True)),
    "unconv_legacy_module_model.pth": (UNCONV, dict(legacy=True, prefix=True, key="model")),
}
# case -> (variant, extra CLI args, DST name, create_model name, expected logits in the npz)
CASES = {
    "converted": ("conv", [], "c.pdparams", "converted_cdnv2_a", "converted"),
    "unconverted_default_ema": ("unconv", [], "u.pdparams", "converted_cdnv2_a", "unconverted_ema"),
    "unconverted_weights_model": ("unconv", ["--weights", "model"], "um.pdparams", "converted_cdnv2_a",
                                  "unconverted"),
    "unconverted_form_train": ("unconv", ["--form", "train"], "ut.pdparams", "cdnv2_a", "unconverted_ema"),
    "unconverted_form_train_model": ("unconv", ["--form", "train", "--weights", "model"], "utm.safetensors",
                                     "cdnv2_a", "unconverted"),
    "legacy_converted": ("conv_legacy.pth", ["--format", "safetensors"], "lc.safetensors", "converted_cdnv2_a",
                         "converted"),
    "legacy_unconverted": ("unconv_legacy.pth.tar", [], "lu.pdparams", "converted_cdnv2_a", "unconverted_ema"),
    "legacy_unconverted_train_model": ("unconv_legacy.pth.tar", ["--form", "train", "--weights", "model"],
                                       "lut.pdparams", "cdnv2_a", "unconverted"),
    "module_bare_converted": ("conv_module_bare.pth", [], "mc.pdparams", "converted_cdnv2_a", "converted"),
    "module_unconverted": ("unconv_module.pth.tar", [], "mu.pdparams", "converted_cdnv2_a", "unconverted_ema"),
    "module_unconverted_train": ("unconv_module.pth.tar", ["--form", "train"], "mut.pdparams", "cdnv2_a",
                                 "unconverted_ema"),
    "legacy_module_model_key": ("unconv_legacy_module_model.pth", [], "lmm.pdparams", "converted_cdnv2_a",
                                "unconverted"),
}


@pytest.fixture(scope="session")
def variants(tmp_path_factory):
    pytest.importorskip("torch")  # only to write the re-saved variants; the conversions run without it
    root = tmp_path_factory.mktemp("variants")
    paths = {}
    for name, (fixture, how) in VARIANTS.items():
        paths[name] = fixture_path(fixture) if how is None else resave_official(fixture_path(fixture), root / name,
                                                                                **how)
    return paths


@pytest.fixture(scope="session")
def torch_free_run(variants, tmp_path_factory):
    """Every conversion case (and --help, and --verify) through the CLI script with `import torch` failing."""
    out = tmp_path_factory.mktemp("converted")
    cases = {name: [str(variants[v]), str(out / dst)] + args for name, (v, args, dst, _, _) in CASES.items()}
    cases["help"] = ["--help"]
    cases["verify_without_torch"] = [str(variants["conv"]), str(out / "verify.pdparams"), "--verify"]
    return run_cli_without_torch(cases, out), out


def test_cli_runs_with_torch_unimportable(torch_free_run):
    results, _ = torch_free_run
    assert results["__env__"] == {"torch_blocked": True, "torch_loaded": False}
    help_text = results["help"]["stdout"]
    assert results["help"]["code"] == 0
    for option in ("--arch", "--form", "--weights", "--verify", "--force", "--format", "--ppim"):
        assert option in help_text
    bad = results["verify_without_torch"]
    assert bad["code"] == 1 and "needs torch" in bad["stderr"] and bad["stderr"].count("\n") == 1


@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_weights_reproduce_official_logits(torch_free_run, official_io, case):
    results, out = torch_free_run
    _, _, dst, model_name, expected = CASES[case]
    res = results[case]
    assert res["code"] == 0, res["stderr"]
    assert f"create_model({model_name!r}" in res["stdout"]
    model = ppcdnv2.create_model(model_name, pretrained=str(out / dst))
    diff = np.abs(paddle_logits(model, official_io["x"]) - official_io[expected]).max()
    assert diff <= TOL, diff


def test_create_model_reads_an_official_checkpoint_directly(official_io):
    """The same safe reader and family mapping behind ``pretrained=<official .pth.tar>`` (condensed on load)."""
    model = ppcdnv2.create_model("converted_cdnv2_a", pretrained=str(fixture_path(UNCONV)))
    diff = np.abs(paddle_logits(model, official_io["x"]) - official_io["unconverted_ema"]).max()
    assert diff <= TOL, diff


# --- user errors: one line, exit 1, no DST -------------------------------------------------------
def _official_state(name):
    return load_torch_file(fixture_path(name))["state_dict"]


def _truncated(tmp):
    data = fixture_path(CONV).read_bytes()
    (tmp / "src.pth").write_bytes(data[: len(data) // 3])


def _text(tmp):
    (tmp / "src.pth").write_text("epoch 3, top-1 71.2\n")


def _resnet(tmp):
    rng = np.random.default_rng(0)
    save_torch_file({"state_dict": {"conv1.weight": rng.standard_normal((64, 3, 7, 7)).astype(np.float32),
                                    "bn1.running_mean": np.zeros(64, np.float32),
                                    "fc.weight": np.zeros((1000, 512), np.float32)}}, tmp / "src.pth")


def _missing_key(tmp):
    state = _official_state(CONV)
    del state["features.denseblock_3.denselayer_2.conv_1.norm.weight"]
    save_torch_file({"state_dict": state}, tmp / "src.pth")


def _wrong_shape(tmp):
    state = _official_state(CONV)
    state["features.denseblock_2.denselayer_1.sfr.norm.bias"] = np.zeros(5, np.float32)
    save_torch_file({"state_dict": state}, tmp / "src.pth")


def _not_condensed(tmp):
    state = _official_state(UNCONV)  # the raw weights; masks of one layer made dense again
    key = "features.denseblock_5.denselayer_8.conv_1._mask"
    state[key] = np.ones_like(state[key])
    save_torch_file({"state_dict": state}, tmp / "src.pth")


def _copy(name):
    def make(tmp):
        (tmp / "src.pth").write_bytes(fixture_path(name).read_bytes())
    return make


ERRORS = {  # case -> (make SRC in tmp, extra args, words the one-line message must contain)
    "truncated": (_truncated, [], ["src.pth", "truncated"]),
    "not_a_checkpoint": (_text, [], ["src.pth", "not a torch checkpoint"]),
    "other_architecture": (_resnet, [], ["not a checkpoint of a known architecture", "conv1.weight"]),
    "arch_flag_mismatch": (_copy(CONV), ["--arch", "cdnv2_b"],
                           ["does not match cdnv2_b", "features.init_conv.weight", "(16, 3, 3, 3)"]),
    "unknown_arch_flag": (_copy(CONV), ["--arch", "cdnv2_z"], ["cdnv2_z", "cdnv2_a"]),
    "missing_key": (_missing_key, [], ["missing key", "features.denseblock_3.denselayer_2.conv_1.norm.weight"]),
    "wrong_shape": (_wrong_shape, [], ["features.denseblock_2.denselayer_1.sfr.norm.bias", "(5,)"]),
    "converted_to_train_form": (_copy(CONV), ["--form", "train"], ["converted", "--form converted"]),
    "not_condensed": (_not_condensed, ["--weights", "model"], ["denselayer_8.conv_1", "--form train"]),
    "torch_dst_for_torch_src": (_copy(CONV), ["__dst__=out.pth"], ["DST must be .pdparams"]),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_user_errors_are_one_clear_line_and_leave_no_dst(tmp_path, capsys, case):
    make, extra, words = ERRORS[case]
    make(tmp_path)
    dst = tmp_path / "out.pdparams"
    if extra and extra[0].startswith("__dst__="):
        dst, extra = tmp_path / extra[0].split("=")[1], extra[1:]
    assert main([str(tmp_path / "src.pth"), str(dst)] + extra) == 1
    out = capsys.readouterr()
    assert out.err.startswith("error:") and out.err.count("\n") == 1 and "Traceback" not in out.err, out.err
    for w in words:
        assert w in out.err, (w, out.err)
    assert not dst.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src.pth"]  # no temporary left either


def test_existing_dst_needs_force(tmp_path, capsys):
    dst = tmp_path / "a.pdparams"
    dst.write_bytes(b"keep me")
    assert main([str(fixture_path(CONV)), str(dst)]) == 1
    assert "--force" in capsys.readouterr().err and dst.read_bytes() == b"keep me"
    assert main([str(fixture_path(CONV)), str(dst), "--force"]) == 0
    assert len(read_weights(dst)) > 300


def test_bad_arguments_exit_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["only_src.pth"])
    assert e.value.code == 2 and capsys.readouterr().err.count("\n") == 1


# --- --verify -------------------------------------------------------------------------------------
def test_verify_reports_a_small_difference(tmp_path, capsys):
    pytest.importorskip("torch")
    assert main([str(fixture_path(CONV)), str(tmp_path / "a.pdparams"), "--verify"]) == 0
    diff = float(re.search(r"logits = ([0-9.e+-]+)", capsys.readouterr().out).group(1))
    assert diff <= TOL


def test_verify_failure_leaves_no_dst(tmp_path, capsys, monkeypatch):
    """A conversion bug (here: a shifted classifier bias) is caught by --verify and nothing is written."""
    pytest.importorskip("torch")
    original = CondenseNetV2Family.official_to_paddle

    def broken(self, state, model):
        out = original(self, state, model)
        out["classifier.bias"] = out["classifier.bias"] + 1e-3
        return out

    monkeypatch.setattr(CondenseNetV2Family, "official_to_paddle", broken)
    dst = tmp_path / "a.pdparams"
    assert main([str(fixture_path(CONV)), str(dst), "--verify"]) == 1
    err = capsys.readouterr().err
    assert "--verify failed" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


# --- Paddle -> torch -> Paddle --------------------------------------------------------------------
def _reference_logits(pth, form, x):
    import torch
    from ppcdnv2.families.condensenet.reference import build_reference

    ref = build_reference("cdnv2_a", form, sfr_index="dense")
    ref.load_state_dict(torch.load(pth, weights_only=True)["state_dict"], strict=True)
    ref.eval()
    torch.set_num_threads(1)
    with torch.no_grad():
        return ref(torch.from_numpy(x)).numpy()


def _paddle_source(tmp_path, form):
    if form == "converted":  # Paddle-made weights: everything random, indexes included
        model = ppcdnv2.create_model("converted_cdnv2_a")
        state = random_converted_state(model, seed=1)
        path = save_weights(state, tmp_path / "paddle.pdparams")
    else:  # a training-form Paddle model (masks, counters) from the unconverted fixture
        path = tmp_path / "paddle.pdparams"
        convert_torch_checkpoint(fixture_path(UNCONV), path, form="train")
    model = ppcdnv2.build_condensenetv2("cdnv2_a", form=form)
    return path, load_state_dict(model, read_weights(path))


@pytest.mark.parametrize("form", ["converted", "train"])
def test_round_trip_paddle_torch_paddle_is_bit_exact(tmp_path, official_io, form):
    torch = pytest.importorskip("torch")
    src, model = _paddle_source(tmp_path, form)
    pth, back = tmp_path / "for_torch.pth", tmp_path / "back.pdparams"
    assert main([str(src), str(pth)]) == 0
    # official layout: the same keys and shapes as the official checkpoint of that form
    official = read_official(fixture_path(CONV if form == "converted" else UNCONV))
    official = official["state_dict"]
    written = torch.load(pth, weights_only=True)["state_dict"]
    assert {k: tuple(v.shape) for k, v in written.items()} == {k: tuple(v.shape) for k, v in official.items()}
    # loads into the torch reference with strict keys and gives our logits
    x = official_io["x"]
    diff = np.abs(_reference_logits(pth, form, x) - paddle_logits(model, x)).max()
    assert diff <= TOL, diff
    # and comes back bit for bit
    extra = ["--form", "train"] if form == "train" else []
    assert main([str(pth), str(back)] + extra) == 0
    before, after = read_weights(src), read_weights(back)
    assert sorted(before) == sorted(after)
    for k in before:
        assert before[k].dtype == after[k].dtype, k
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)


# --- architecture detection -------------------------------------------------------------------------
CUSTOM = CondenseNetV2Config(stages=(1, 2, 2), growth=(4, 8, 8), bottleneck=2, condense_factor=4, trans_factor=4,
                             group_1x1=2, group_3x3=2, group_trans=2, last_se_reduction=4, hs_start_block=1,
                             se_start_block=1, fc_channel=24, num_classes=7, stem="cifar")
HIDDEN = dict(hs_start_block=CUSTOM.hs_start_block, stem=CUSTOM.stem)


def test_custom_converted_configuration_is_inferred_both_layouts(tmp_path, capsys):
    model = ppcdnv2.build_condensenetv2(CUSTOM, form="converted")
    state = random_converted_state(model, seed=2)
    det = find_family(state).detect(state, "paddle")
    assert det.source == "inferred" and det.cfg.replace(**HIDDEN) == CUSTOM
    assert any("hs_start_block" in n for n in det.notes)
    # to torch and back with the hidden fields given by --arch FILE
    arch = tmp_path / "custom.json"
    arch.write_text(json.dumps(CUSTOM.to_dict()))
    src, pth, back = save_weights(state, tmp_path / "c.pdparams"), tmp_path / "c.pth", tmp_path / "back.pdparams"
    assert main([str(src), str(pth), "--arch", str(arch)]) == 0
    torch_state = load_torch_file(pth)["state_dict"]
    assert find_family(torch_state).detect(torch_state, "torch").cfg.replace(**HIDDEN) == CUSTOM
    assert main([str(pth), str(back), "--arch", str(arch)]) == 0
    hint = capsys.readouterr().out.rsplit("load it with: ", 1)[1].strip()
    assert "get_family('condensenetv2').build(" in hint
    model_back = eval(hint, {"ppcdnv2": ppcdnv2})  # the printed line is Python that loads the file
    assert model_back.cfg.replace(**HIDDEN) == CUSTOM.replace(**HIDDEN)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    load_state_dict(model, state)
    np.testing.assert_array_equal(paddle_logits(model_back, x), paddle_logits(model, x))


def test_training_form_groups_and_factors_come_from_the_masks():
    import paddle

    cfg = CUSTOM.replace(group_1x1=4, condense_factor=2, group_trans=4, trans_factor=2, stages=(1, 1, 1),
                         growth=(8, 8, 8), last_se_reduction=2)
    model = ppcdnv2.build_condensenetv2(cfg, form="train")
    model.train()
    model(paddle.randn([1, 3, 32, 32]), progress=1.0)  # masks reach the final stage
    from ppcdnv2.convert import paddle_to_torch_state

    torch_state = paddle_to_torch_state(state_dict_numpy(model), model)
    spec = find_family(torch_state)
    inferred, hidden = spec.infer_config(torch_state, "torch", "train")
    assert set(hidden) == {"hs_start_block", "stem"}
    assert inferred.replace(**HIDDEN) == cfg
    # before any channel is dropped the masks say nothing, and the fields are reported hidden
    fresh = ppcdnv2.build_condensenetv2(cfg, form="train")
    fresh_state = paddle_to_torch_state(state_dict_numpy(fresh), fresh)
    _, hidden = spec.infer_config(fresh_state, "torch", "train")
    assert {"group_1x1", "condense_factor", "group_trans", "trans_factor"} <= set(hidden)
