"""The torch-free checkpoint reader and writer against torch's own save/load."""
import argparse
import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from conftest import fixture_path
from ppcdnv2.convert.torch_file import TorchFileError, load_torch_file
from ppcdnv2.convert.torch_writer import save_torch_file

torch = pytest.importorskip("torch")


def _as_numpy(t):
    t = t.detach()
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def _assert_same(ours, theirs, where="obj"):
    """``ours`` (numpy world) equals ``theirs`` (torch world), arrays bit for bit and dtype for dtype."""
    if isinstance(theirs, torch.Tensor):
        ref = _as_numpy(theirs)
        assert isinstance(ours, np.ndarray), where
        assert ours.dtype == ref.dtype and ours.shape == ref.shape, (where, ours.dtype, ours.shape, ref.dtype)
        np.testing.assert_array_equal(ours, ref, err_msg=where)
    elif isinstance(theirs, dict):
        assert type(ours) is type(theirs) and list(ours) == list(theirs), where
        for k in theirs:
            _assert_same(ours[k], theirs[k], f"{where}[{k!r}]")
    elif isinstance(theirs, (list, tuple)):
        assert type(ours) is type(theirs) and len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            _assert_same(a, b, f"{where}[{i}]")
    elif isinstance(theirs, argparse.Namespace):
        assert vars(ours).keys() == vars(theirs).keys(), where
        for k in vars(theirs):
            _assert_same(getattr(ours, k), getattr(theirs, k), f"{where}.{k}")
    elif isinstance(theirs, torch.device):
        assert ours == str(theirs), where
    else:
        assert ours == theirs and type(ours) is type(theirs), (where, ours, theirs)


def _zoo():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    return OrderedDict(
        plain=base, transposed=base.t(), row_view=base[2, 1:5], strided=base[::2, ::3], scalar=torch.tensor(2.5),
        half=torch.randn(5, generator=g).half(), bf16=torch.randn(5, generator=g).bfloat16(),
        double=torch.randn(2, 2, dtype=torch.float64, generator=g), long=torch.arange(7),
        int=torch.arange(3, dtype=torch.int32), int8=torch.arange(-3, 3, dtype=torch.int8),
        uint8=torch.arange(4, dtype=torch.uint8), bool=torch.tensor([True, False, True]), empty=torch.zeros(0, 3),
        count=torch.tensor(7), param=torch.nn.Parameter(torch.randn(3, generator=g)),
        nested={"args": argparse.Namespace(lr=0.1, stages="1-1-4-6-8", group=[8, 8], flag=True),
                "list": [1, 2.5, "x", None, (torch.ones(2), {"deep": torch.zeros(1)})]},
        extras=[b"bytes", {1, 2}, torch.device("cpu")],
    )


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_reads_what_torch_writes(tmp_path, legacy):
    """Views, strides, offsets, every dtype, parameters, namespaces, containers: as torch.load gives them."""
    obj = _zoo()
    path = tmp_path / "zoo.pth"
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    ours = load_torch_file(path)
    _assert_same(ours, obj)
    assert not np.shares_memory(ours["plain"], ours["transposed"])  # independent, writable copies
    assert ours["plain"].flags.writeable


@pytest.mark.parametrize("name", ["cdnv2_a_s0_unconverted.pth.tar", "cdnv2_a_s0_converted.pth.tar"])
def test_reads_the_official_fixtures_like_torch(name):
    path = fixture_path(name)
    with torch.serialization.safe_globals([argparse.Namespace]):
        theirs = torch.load(path, weights_only=True, map_location="cpu")
    _assert_same(load_torch_file(path), theirs)


def test_writer_output_loads_in_torch_safely_and_reads_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    state = OrderedDict(w=rng.standard_normal((3, 4)).astype(np.float32), t=rng.standard_normal((4, 3)).T,
                        i=np.arange(5), s=np.zeros((), np.int64), b=np.array([True, False]),
                        h=np.ones(3, np.float16), e=np.zeros((0, 2), np.float32), u=np.arange(3, dtype=np.uint8))
    obj = {"state_dict": state, "epoch": np.int64(3), "meta": [1.5, "s", None, (1, 2)]}
    path = save_torch_file(obj, tmp_path / "w.pth")
    for mmap in (False, True):  # mmap needs torch's 64-byte record alignment
        loaded = torch.load(path, weights_only=True, mmap=mmap)
        assert isinstance(loaded["state_dict"], OrderedDict) and list(loaded["state_dict"]) == list(state)
        for k, v in state.items():
            got = loaded["state_dict"][k].numpy()
            assert got.dtype == v.dtype and got.shape == v.shape, k
            np.testing.assert_array_equal(got, v, err_msg=k)
        assert loaded["epoch"] == 3 and loaded["meta"] == [1.5, "s", None, (1, 2)]
    back = load_torch_file(path)
    for k, v in state.items():
        assert back["state_dict"][k].dtype == v.dtype
        np.testing.assert_array_equal(back["state_dict"][k], v)


def test_writer_refuses_what_a_checkpoint_cannot_hold(tmp_path):
    with pytest.raises(TypeError, match="cannot write"):
        save_torch_file({"x": object()}, tmp_path / "bad.pth")
    with pytest.raises(TypeError, match="object"):
        save_torch_file({"x": np.array([None])}, tmp_path / "bad.pth")
    assert not (tmp_path / "bad.pth").exists()


def _truncated_zip(tmp_path):
    src = fixture_path("cdnv2_a_s0_converted.pth.tar").read_bytes()
    return src[: len(src) // 2]


def _legacy_bytes(tmp_path):
    path = tmp_path / "legacy_src.pth"
    torch.save({"w": torch.randn(100, 10)}, path, _use_new_zipfile_serialization=False)
    return path.read_bytes()


def _torchscript(tmp_path):
    path = tmp_path / "ts.pt"
    torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)).save(str(path))
    return path.read_bytes()


def _zip_without_storage(tmp_path):
    path = tmp_path / "src.pth"
    torch.save({"w": torch.randn(4)}, path)
    out = tmp_path / "nostorage.bin"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            if "/data/" not in item.filename:
                zout.writestr(item, zin.read(item))
    return out.read_bytes()


BAD_FILES = {
    "empty": (lambda tmp: b"", "empty file"),
    "text": (lambda tmp: b"this is not a checkpoint\n", "not a torch checkpoint"),
    "plain_pickle": (lambda tmp: pickle.dumps({"w": np.zeros(3)}), "magic number"),
    "truncated_zip": (_truncated_zip, "truncated"),
    "truncated_legacy": (lambda tmp: _legacy_bytes(tmp)[:-2000], "truncated"),
    "legacy_header_only": (lambda tmp: _legacy_bytes(tmp)[:40], "truncated"),
    "torchscript": (_torchscript, "TorchScript"),
    "zip_missing_storage": (_zip_without_storage, "missing"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_unreadable_files_give_a_clear_error(tmp_path, case):
    make, words = BAD_FILES[case]
    path = tmp_path / f"{case}.pth"
    path.write_bytes(make(tmp_path))
    with pytest.raises(TorchFileError) as err:
        load_torch_file(path)
    assert str(path) in str(err.value) and words in str(err.value), str(err.value)


def test_missing_file():
    with pytest.raises(TorchFileError, match="no such file"):
        load_torch_file("/nonexistent/ckpt.pth")
