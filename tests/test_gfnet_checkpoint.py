"""GFNet checkpoints as released (torch 1.3.1, GPU, legacy format) and as upstream ``train.py`` saves them,
read without torch by ``ppcdnv2.families.gfnet.checkpoint`` and compared bit for bit with the fixtures'
weights (``rule.py`` / ``_io.npz``) and with ``torch.load(map_location='cpu')`` of the same file.

The files are written into pytest's tmp dirs by the fixtures' ``write_checkpoint.py`` (needs torch); the
reading runs in a subprocess in which ``import torch`` fails. RegNetY-600MF (~70 MiB) is the quick case;
ResNet-50 (~410 MiB) and MobileNetV3 (~110 MiB, calibrated BatchNorm statistics from the ``_io.npz``) are slow.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import gfnet_fixtures as gf
from conftest import fixture_path
from helpers_convert import NO_TORCH, REPO
from ppcdnv2.convert.torch_file import TorchFileError, load_torch_file
from ppcdnv2.families.gfnet.checkpoint import (GFNetCheckpoint, GFNetCheckpointError, is_gfnet_checkpoint,
                                               parse_gfnet_checkpoint, read_gfnet_checkpoint)

QUICK = "regnety_600m_p96_t5"
SLOW = ("resnet50_p96_t5", "mobilenetv3_large_100_p96_t3")
COMPONENTS = ("model_prime_state_dict", "model_state_dict", "fc", "policy")
BACKBONES = ("model_prime_state_dict", "model_state_dict")
FIELDS = ("model_name", "patch_size", "model_flops", "policy_flops", "fc_flops", "flops", "anytime_classification",
          "budgeted_batch_classification")
GRU = {"fc": "rnn.", "policy": "gru."}


# --- writing the files (torch) ---------------------------------------------------------------------
def write_released(name: str, out: Path) -> Path:
    """``write_checkpoint.py NAME_s0.json OUT`` as a user runs it (the fixtures' own writer)."""
    pytest.importorskip("torch")
    script = fixture_path("write_checkpoint.py", "gfnet")
    desc = fixture_path(f"{name}_s0.json", "gfnet")
    if gf.description(name)["bn_calibration"]["calibrated"]:
        fixture_path(f"{name}_s0_io.npz", "gfnet")  # its BN statistics come from there
    run = subprocess.run([sys.executable, str(script), str(desc), str(out)], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0 and out.is_file(), run.stderr[-3000:]
    return out


# The released files carry state_dict()'s ``_metadata``; write_checkpoint.py's OrderedDicts do not, so this
# variant adds it (as torch's Module.state_dict() would: one {'version': 1} per module path) and saves with
# the fixtures' save_released_format.
_WRITE_WITH_METADATA = textwrap.dedent('''
    import collections, sys
    sys.path.insert(0, sys.argv[1])
    import write_checkpoint
    ck = write_checkpoint.build_checkpoint(sys.argv[2])
    for comp in ("model_prime_state_dict", "model_state_dict", "fc", "policy"):
        sd = ck[comp]
        modules = [""] + sorted({k.rsplit(".", 1)[0] for k in sd})
        sd._metadata = collections.OrderedDict((m, {"version": 2 if m.endswith("bn") else 1}) for m in modules)
    write_checkpoint.save_released_format(ck, sys.argv[3])
''')


def write_released_with_metadata(name: str, out: Path) -> Path:
    pytest.importorskip("torch")
    script = fixture_path("write_checkpoint.py", "gfnet")
    desc = fixture_path(f"{name}_s0.json", "gfnet")
    run = subprocess.run([sys.executable, "-c", _WRITE_WITH_METADATA, str(script.parent), str(desc), str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and out.is_file(), run.stderr[-3000:]
    return out


def write_train_checkpoint(released: Path, out: Path, stage: int, legacy: bool) -> Path:
    """What upstream ``train.py``'s ``save_checkpoint`` writes (its dict keys, no ``module.`` prefix, SGD and
    Adam optimizer states; stage 1: no policy, no ppo optimizer), from a released file's tensors."""
    torch = pytest.importorskip("torch")
    ck = torch.load(released, map_location="cpu")
    strip = lambda sd: OrderedDict((k[len("module."):], v) for k, v in sd.items())
    fc_params = [torch.nn.Parameter(v.clone()) for v in ck["fc"].values()]
    sgd = torch.optim.SGD(fc_params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    for p in fc_params:
        p.grad = torch.ones_like(p)
    sgd.step()
    state = {"epoch": 7, "model_state_dict": strip(ck["model_state_dict"]),
             "model_prime_state_dict": strip(ck["model_prime_state_dict"]), "fc": ck["fc"], "acc": 71.25,
             "best_acc": 72.5, "optimizer": sgd.state_dict(), "ppo_optimizer": None, "policy": None}
    if stage != 1:
        pol_params = [torch.nn.Parameter(v.clone()) for v in ck["policy"].values()]
        adam = torch.optim.Adam(pol_params, lr=0.0003, betas=(0.9, 0.999))
        for p in pol_params:
            p.grad = torch.ones_like(p)
        adam.step()
        state.update(ppo_optimizer=adam.state_dict(), policy=ck["policy"])
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out, _use_new_zipfile_serialization=not legacy)
    return out


def overrun_view(src: Path, out: Path, component="fc", key="rnn.bias_hh_l0") -> Path:
    """``src`` with the storage offset of ``component[key]`` (a GRU view of the shared storage) raised by one
    element, patched in place in the pickle: the view now ends one element past its storage."""
    data = src.read_bytes()
    f = __import__("io").BytesIO(data)
    for _ in range(3):  # magic number, protocol, sys info
        pickle.load(f)
    ops, state = list(pickletools.genops(f)), 0
    for i, (op, arg, pos) in enumerate(ops):
        if state == 0 and op.name == "BINUNICODE" and arg == component:
            state = 1
        elif state == 1 and op.name == "BINUNICODE" and arg == key:
            state = 2
        elif state == 2 and op.name == "BINPERSID":
            op, arg, pos = ops[i + 1]  # _rebuild_tensor_v2(storage, storage_offset, ...)
            assert op.name == "BININT" and arg > 0, (op.name, arg)
            patched = bytearray(data)
            patched[pos + 1:pos + 5] = struct.pack("<i", arg + 1)
            out.write_bytes(bytes(patched))
            return out
    raise AssertionError(f"no tensor record for {component}[{key!r}] in {src}")


# --- reading without torch (subprocess) --------------------------------------------------------------
_READER = NO_TORCH + textwrap.dedent('''
    import dataclasses, hashlib, json, pickle
    cases, out = json.loads(sys.argv[1]), sys.argv[2]
    try:
        import torch  # noqa: F401
        blocked = False
    except ImportError:
        blocked = True
    from ppcdnv2.families.gfnet.checkpoint import read_gfnet_checkpoint

    def digest(sd):
        return None if sd is None else {k: (str(v.dtype), v.shape, hashlib.sha256(v.tobytes()).hexdigest())
                                        for k, v in sd.items()}

    results = {}
    for name, (path, full) in cases.items():
        try:
            ck = read_gfnet_checkpoint(path)
        except Exception as e:
            chained = e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__)
            results[name] = {"error": [c.__name__ for c in type(e).__mro__], "message": str(e), "chained": chained}
            continue
        if not full:  # only digests of the tensors come back
            ck = dataclasses.replace(ck, **{c: digest(getattr(ck, c)) for c in
                                            ("model_prime_state_dict", "model_state_dict", "fc", "policy")},
                                     extra={k: repr(type(v)) for k, v in ck.extra.items()})
        results[name] = {"ck": ck}
    results["__env__"] = {"torch_blocked": blocked, "torch_loaded": "torch" in sys.modules}
    with open(out, "wb") as f:
        pickle.dump(results, f, protocol=5)
''')


def read_without_torch(cases: dict, workdir: Path) -> dict:
    """``{name: (path, full)}`` → ``{name: {"ck": GFNetCheckpoint} | {"error": mro names, "message", ...}}``,
    read by ``read_gfnet_checkpoint`` in one interpreter where ``import torch`` fails. ``full=False`` returns
    (dtype, shape, sha256) per tensor instead of the arrays."""
    out = workdir / "read_results.pkl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cases = {k: (str(p), full) for k, (p, full) in cases.items()}
    run = subprocess.run([sys.executable, "-c", _READER, json.dumps(cases), str(out)], capture_output=True,
                         text=True, cwd=workdir, timeout=600, env=env)
    assert run.returncode == 0 and out.exists(), run.stderr[-3000:]
    results = pickle.loads(out.read_bytes())  # our own subprocess's output
    assert results.pop("__env__") == {"torch_blocked": True, "torch_loaded": False}
    return results


# --- comparisons -----------------------------------------------------------------------------------
def _digest(sd):
    return {k: (str(v.dtype), v.shape, hashlib.sha256(v.tobytes()).hexdigest()) for k, v in sd.items()}


def assert_same_tensors(ours, ref, where):
    """Same keys in the same order, every tensor the same dtype, shape and bytes."""
    assert list(ours) == list(ref), (where, [k for k in ours if k not in ref][:5], [k for k in ref if k not in ours][:5])
    for k, r in ref.items():
        o = ours[k]
        assert isinstance(o, np.ndarray), (where, k, type(o))
        assert o.dtype == r.dtype and o.shape == r.shape, (where, k, o.dtype, o.shape, r.dtype, r.shape)
        if o.tobytes() != r.tobytes():
            np.testing.assert_array_equal(o, r, err_msg=f"{where}[{k!r}]")
            raise AssertionError(f"{where}[{k!r}]: equal values but different bits")


def torch_state(released_torch, component):
    sd = released_torch[component]
    return OrderedDict((k[len("module."):] if component in BACKBONES else k, v.numpy()) for k, v in sd.items())


def assert_matches_fixture_and_torch(name, ck: GFNetCheckpoint, path: Path):
    """Every tensor bit for bit as the fixture's weights and as torch.load gives it; the fields as the json."""
    torch = pytest.importorskip("torch")
    released = torch.load(path, map_location="cpu")
    desc = gf.description(name)
    assert ck.kind == "release" and ck.path == path
    for comp in COMPONENTS:
        ours = getattr(ck, comp)
        assert all(not k.startswith("module.") for k in ours), comp
        assert_same_tensors(ours, gf.weights(name, comp), f"{name} {comp} vs fixture")
        assert_same_tensors(ours, torch_state(released, comp), f"{name} {comp} vs torch.load")
        n_bt = [k for k in ours if k.endswith("num_batches_tracked")]
        assert all(ours[k].dtype == np.int64 and ours[k].shape == () and ours[k] == 0 for k in n_bt), comp
    assert any(k.endswith("num_batches_tracked") for k in ck.model_state_dict)

    fields = desc["checkpoint_fields"]
    for f in FIELDS:
        assert getattr(ck, f) == fields[f] == released[f], f
        assert type(getattr(ck, f)) is type(fields[f]), f
    t = fields["dynamic_threshold"]
    expected = np.asarray(t["values"], dtype=t["dtype"]).reshape(t["shape"])
    assert ck.dynamic_threshold.dtype == np.float32 and ck.dynamic_threshold.shape == (39, desc["config"]["T"])
    assert ck.dynamic_threshold.tobytes() == expected.tobytes() == released["dynamic_threshold"].numpy().tobytes()
    assert ck.dynamic_threshold.tobytes() == gf.budget(name)["thresholds"].tobytes()
    assert ck.T == desc["config"]["T"] and ck.fc_rnn == desc["config"]["fc_rnn"]
    assert ck.policy_conv == desc["config"]["policy_conv"]
    assert ck.extra == {}


def assert_gru_views(name, ck: GFNetCheckpoint, path: Path):
    """The file really stores each GRU as views of one storage at the json's offsets (checked with torch),
    and the reader returns each view's own elements."""
    torch = pytest.importorskip("torch")
    released = torch.load(path, map_location="cpu")
    layouts = gf.description(name)["storage"]["shared_gru_storage"]
    assert set(layouts) == {c for c in GRU if any(k.startswith(GRU[c]) for k in getattr(ck, c))}
    for comp, layout in layouts.items():
        tensors = [released[comp][k] for k, _, _ in layout]
        assert len({t.untyped_storage().data_ptr() for t in tensors}) == 1, comp
        assert [t.storage_offset() for t in tensors] == [off for _, off, _ in layout], comp
        assert any(off > 0 for _, off, _ in layout)
        ours = getattr(ck, comp)
        assert [ours[k].size for k, _, _ in layout] == [n for _, _, n in layout], comp
        flat = np.concatenate([ours[k].reshape(-1) for k, _, _ in layout])
        whole = tensors[0].untyped_storage().nbytes() // tensors[0].element_size()
        storage = tensors[0].as_strided((whole,), (1,), 0).numpy()  # the whole shared storage
        assert flat.size == storage.size and flat.tobytes() == storage.tobytes(), comp


# --- the quick case: RegNetY-600MF, all variants written once -----------------------------------------
@pytest.fixture(scope="module")
def regnet(tmp_path_factory):
    pytest.importorskip("torch")
    d = tmp_path_factory.mktemp("gfnet_ck")
    released = write_released(QUICK, d / f"{QUICK}.pth.tar")
    data = released.read_bytes()
    files = {
        "released": (released, True),
        "metadata": (write_released_with_metadata(QUICK, d / "with_metadata.pth.tar"), False),
        "train3": (write_train_checkpoint(released, d / "GF-regnety_600m_patch-size-96_T5_train-stage3" /
                                          "checkpoint.pth.tar", stage=3, legacy=True), False),
        "train1": (write_train_checkpoint(released, d / "GF-regnety_600m_patch-size-96_T5_train-stage1" /
                                          "model_best.pth.tar", stage=1, legacy=False), False),
        "truncated_data": (d / "truncated_data.pth.tar", False),
        "truncated_pickle": (d / "truncated_pickle.pth.tar", False),
        "overrun": (overrun_view(released, d / "overrun.pth.tar"), False),
        "not_gfnet": (d / "not_gfnet.pth", False),
    }
    files["truncated_data"][0].write_bytes(data[:-1000])
    files["truncated_pickle"][0].write_bytes(data[:4096])
    import torch
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, files["not_gfnet"][0],
               _use_new_zipfile_serialization=False)
    return {"dir": d, "files": {k: p for k, (p, _) in files.items()}, "results": read_without_torch(files, d)}


def test_released_regnet_reads_without_torch_like_the_fixture_and_torch(regnet):
    path = regnet["files"]["released"]
    assert_matches_fixture_and_torch(QUICK, regnet["results"]["released"]["ck"], path)


def test_gru_views_of_one_shared_storage_come_out_right(regnet):
    assert_gru_views(QUICK, regnet["results"]["released"]["ck"], regnet["files"]["released"])


def test_state_dict_metadata_survives_and_does_not_disturb(regnet):
    torch = pytest.importorskip("torch")
    path = regnet["files"]["metadata"]
    theirs = torch.load(path, map_location="cpu")
    ours = load_torch_file(path)  # the reader never imports torch (checked above); torch is merely loaded here
    for comp in COMPONENTS:
        assert isinstance(ours[comp], OrderedDict)
        assert ours[comp]._metadata == theirs[comp]._metadata and len(ours[comp]._metadata) > 2, comp
    ck = regnet["results"]["metadata"]["ck"]
    ref = regnet["results"]["released"]["ck"]
    for comp in COMPONENTS:
        assert getattr(ck, comp) == _digest(getattr(ref, comp)), comp
    assert ck.dynamic_threshold.tobytes() == ref.dynamic_threshold.tobytes()
    assert [getattr(ck, f) for f in FIELDS] == [getattr(ref, f) for f in FIELDS]


@pytest.mark.parametrize("case, stage", [("train3", 3), ("train1", 1)])
def test_train_py_checkpoints(regnet, case, stage):
    """upstream train.py's save_checkpoint dict (legacy format, and the zip format of torch >= 1.6)."""
    ck = regnet["results"][case]["ck"]
    ref = regnet["results"]["released"]["ck"]
    assert ck.kind == "train" and ck.path == regnet["files"][case]
    assert (ck.model_name, ck.patch_size, ck.T, ck.train_stage) == ("regnety_600m", 96, 5, stage)
    assert (ck.epoch, ck.acc, ck.best_acc) == (7, 71.25, 72.5)
    for comp in ("model_prime_state_dict", "model_state_dict", "fc"):
        assert getattr(ck, comp) == _digest(getattr(ref, comp)), comp
    if stage == 1:
        assert ck.policy is None and ck.extra["ppo_optimizer"] == repr(type(None))
    else:
        assert ck.policy == _digest(ref.policy) and ck.extra["ppo_optimizer"] == repr(dict)
    assert ck.extra["optimizer"] == repr(dict)
    assert ck.dynamic_threshold is None and ck.flops is None and ck.budgeted_batch_classification is None


def test_train_checkpoint_optimizer_state_and_overrides(regnet):
    torch = pytest.importorskip("torch")
    path = regnet["files"]["train3"]
    ck = read_gfnet_checkpoint(path)
    theirs = torch.load(path, map_location="cpu")
    assert ck.extra["optimizer"]["param_groups"][0]["momentum"] == 0.9
    for i, state in theirs["optimizer"]["state"].items():
        assert ck.extra["optimizer"]["state"][i]["momentum_buffer"].tobytes() == state["momentum_buffer"].numpy().tobytes()
    assert set(ck.extra["ppo_optimizer"]["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    with pytest.raises(GFNetCheckpointError, match="patch_size 128 was given"):
        read_gfnet_checkpoint(path, patch_size=128)
    # outside upstream's run directory the caller names what the file does not record
    moved = parse_gfnet_checkpoint(load_torch_file(path), regnet["dir"] / "elsewhere.pth.tar",
                                   model_name="regnety_600m", patch_size=96)
    assert (moved.model_name, moved.patch_size, moved.T, moved.train_stage) == ("regnety_600m", 96, None, None)


@pytest.mark.parametrize("case, words", [
    ("truncated_data", ["TorchFileError", "truncated"]),
    ("truncated_pickle", ["TorchFileError", "truncated"]),
    ("overrun", ["TorchFileError", "fc['rnn.bias_hh_l0']", "past the end of its storage"]),
    ("not_gfnet", ["GFNetCheckpointError", "not a GFNet checkpoint", "'model_prime_state_dict'"]),
])
def test_bad_files_give_one_clear_error_naming_the_file(regnet, case, words):
    result = regnet["results"][case]
    assert "error" in result, f"{case} was read: {result}"
    assert words[0] in result["error"] and "WeightsError" in result["error"]
    msg = result["message"]
    assert msg.startswith(str(regnet["files"][case]) + ":") and "\n" not in msg, msg
    assert all(w in msg for w in words[1:]), msg
    assert not result["chained"], msg


def test_detection_on_loaded_objects(regnet):
    files = regnet["files"]
    assert is_gfnet_checkpoint(load_torch_file(files["released"]))
    assert is_gfnet_checkpoint(load_torch_file(files["train1"]))  # stage 1: policy None
    assert not is_gfnet_checkpoint(load_torch_file(files["not_gfnet"]))


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_big_released_checkpoints(tmp_path, name):
    """ResNet-50 (GRU fc, linear policy) and MobileNetV3 (cascade fc, BN statistics from the _io.npz)."""
    path = write_released(name, tmp_path / f"{name}.pth.tar")
    ck = read_without_torch({"released": (path, True)}, tmp_path)["released"]["ck"]
    assert_matches_fixture_and_torch(name, ck, path)
    if gf.description(name)["storage"].get("shared_gru_storage"):
        assert_gru_views(name, ck, path)
    if name.startswith("mobilenetv3"):
        assert not ck.fc_rnn and "gru.weight_ih_l0" in ck.policy
        assert any(s == "npz" for *_, s in gf.description(name)["state_dicts"]["model_state_dict"])


# --- structure checks on objects (numpy only, no files) ---------------------------------------------
def _release_obj(T=3):
    sd = lambda prefix="": OrderedDict([(prefix + "conv.weight", np.ones((2, 1, 1, 1), np.float32)),
                                        (prefix + "bn.num_batches_tracked", np.zeros((), np.int64))])
    return OrderedDict(
        model_name="resnet50", patch_size=96, model_prime_state_dict=sd("module."), model_state_dict=sd("module."),
        fc=OrderedDict([("rnn.weight_ih_l0", np.ones((6, 2), np.float32))]),
        policy=OrderedDict([("gru.weight_ih_l0", np.ones((6, 2), np.float32))]), model_flops=1.5,
        policy_flops=0.25, fc_flops=0.5, flops=[1.0 * (t + 1) for t in range(T)],
        anytime_classification=[50.0] * T, dynamic_threshold=np.full((39, T), 0.5, np.float32),
        budgeted_batch_classification=[[1.0] * 39, [60.0] * 39])


def test_parse_strips_module_and_keeps_fields():
    ck = parse_gfnet_checkpoint(_release_obj(), "x.pth.tar")
    assert list(ck.model_state_dict) == ["conv.weight", "bn.num_batches_tracked"]
    assert list(ck.fc) == ["rnn.weight_ih_l0"] and ck.T == 3 and ck.fc_rnn
    assert dataclasses.asdict(ck)["patch_size"] == 96


@pytest.mark.parametrize("field", ["dynamic_threshold", "policy", "model_name", "flops", "fc"])
def test_missing_field_is_named(field):
    obj = _release_obj()
    del obj[field]
    with pytest.raises(GFNetCheckpointError) as err:
        parse_gfnet_checkpoint(obj, "/some/GFNet.pth.tar")
    assert str(err.value).startswith("/some/GFNet.pth.tar:") and repr(field) in str(err.value)


@pytest.mark.parametrize("field, value, words", [
    ("dynamic_threshold", np.zeros((39, 3), np.float64), "float32"),
    ("dynamic_threshold", np.zeros((39, 4), np.float32), "T=3"),
    ("flops", "abc", "list of numbers"),
    ("policy", None, "state dict"),
    ("model_state_dict", OrderedDict([("module.a", np.zeros(1)), ("b", np.zeros(1))]), "mixes"),
    ("budgeted_batch_classification", [[1.0], [2.0, 3.0]], "accuracies"),
])
def test_malformed_field_is_named(field, value, words):
    obj = _release_obj()
    obj[field] = value
    with pytest.raises(GFNetCheckpointError, match=field) as err:
        parse_gfnet_checkpoint(obj, "ck.pth")
    assert words in str(err.value) and str(err.value).startswith("ck.pth:")


def test_detection():
    assert is_gfnet_checkpoint(_release_obj())
    train = {k: v for k, v in _release_obj().items() if k in ("model_state_dict", "model_prime_state_dict", "fc")}
    assert is_gfnet_checkpoint({**train, "epoch": 1, "policy": None, "optimizer": None})
    assert not is_gfnet_checkpoint({**train, "policy": None})  # no policy outside training stage 1
    assert not is_gfnet_checkpoint(train)
    assert not is_gfnet_checkpoint({"state_dict": {"w": np.zeros(1)}})
    assert not is_gfnet_checkpoint(_release_obj()["fc"]) and not is_gfnet_checkpoint(None)
    with pytest.raises(GFNetCheckpointError, match="not a GFNet checkpoint"):
        parse_gfnet_checkpoint([1, 2], "list.pth")


# --- the reader's allow-list objects cannot be rewritten by a file --------------------------------------
def _legacy_file(main_pickle: bytes) -> bytes:
    header = [pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), pickle.dumps(1001, protocol=2),
              pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)]
    return b"".join(header) + main_pickle


@pytest.mark.parametrize("target", ["torch.cuda\nFloatStorage", "torch\nFloatStorage", "torch\nfloat32",
                                    "torch\nTensor"], ids=["cuda.FloatStorage", "FloatStorage", "float32", "Tensor"])
def test_a_file_cannot_rewrite_the_shared_storage_types(tmp_path, target):
    """BUILD on an allowed placeholder (slot state ``dtype``/``name``) is refused, and the next file still reads
    right: a crafted checkpoint must not change how later checkpoints in the same process are decoded."""
    evil = tmp_path / "evil.pth"
    evil.write_bytes(_legacy_file(b"c" + target.encode() + b"\n(N}(S'dtype'\nS'<i4'\nS'name'\nS'x'\n"
                                  b"S'storage'\nS'IntStorage'\nutb."))
    with pytest.raises(TorchFileError, match="evil.pth"):
        load_torch_file(evil)
    torch = pytest.importorskip("torch")
    good = tmp_path / "good.pth"
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3) / 7
    torch.save({"w": w}, good, _use_new_zipfile_serialization=False)
    back = load_torch_file(good)["w"]
    assert back.dtype == np.float32 and back.tobytes() == w.numpy().tobytes()
