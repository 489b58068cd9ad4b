"""Malicious checkpoints: refused by name, their side effect (a marker file) never happens.

The payloads are built with plain ``pickle`` in the torch file layouts (no torch needed); a control
test runs each payload's pickle with the unrestricted ``pickle`` module to prove it is live.
"""
import argparse
import io
import os
import pickle
import struct
import subprocess
import zipfile
from collections import OrderedDict

import pytest

from ppcdnv2.convert import torch_writer
from ppcdnv2.convert.cli import main
from ppcdnv2.convert.torch_file import TorchFileError, UnsafeCheckpointError, load_torch_file


class SystemCall:
    """``__reduce__`` → ``os.system("touch MARKER")``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class SubprocessCall(SystemCall):
    def __reduce__(self):
        return subprocess.call, (["touch", self.marker],)


class ExecCall(SystemCall):
    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


class Sneaky:
    """An innocent-looking object whose unpickling (``__setstate__``) has the side effect."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __setstate__(self, state):
        open(state["marker"], "w").close()


def _getattr_chain(marker):
    """``getattr(__import__('os'), 'system')('touch ...')`` spelled in raw protocol-0 opcodes."""
    return (b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR(S'touch " +
            str(marker).encode() + b"'\ntR.")


def _posix_system(marker):
    return b"cposix\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."


def _zip_file(path, data_pkl: bytes):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/version", "3\n")


def _legacy_file(path, data_pkl: bytes):
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(data_pkl)
        pickle.dump([], f, protocol=2)


# name -> (payload pickle given the marker path, container writer, global the refusal must name)
PAYLOADS = {
    "os_system_top_level_zip": (lambda m: pickle.dumps(SystemCall(m), protocol=2), _zip_file, "system"),
    "subprocess_in_state_dict_legacy": (
        lambda m: pickle.dumps({"state_dict": {"conv.weight": SubprocessCall(m)}}, protocol=2), _legacy_file,
        "subprocess.call"),
    "nested_object_in_state_dict_zip": (
        lambda m: pickle.dumps({"state_dict": {"fc.bias": [1, {"x": Sneaky(m)}]}}, protocol=2), _zip_file,
        "Sneaky"),
    "exec_inside_args_namespace_zip": (
        lambda m: pickle.dumps({"args": argparse.Namespace(lr=ExecCall(m)), "state_dict": {}}, protocol=2),
        _zip_file, "builtins.exec"),
    "getattr_import_chain_legacy": (_getattr_chain, _legacy_file, "builtins.getattr"),
    "posix_system_protocol0_zip": (_posix_system, _zip_file, "posix.system"),
}


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_payload_is_live_with_plain_pickle(tmp_path, name):
    """Control: without the restricted reader the payload runs (so the refusal below means something)."""
    marker = tmp_path / "pwned"
    payload, _, _ = PAYLOADS[name]
    try:
        pickle.loads(payload(marker))
    except Exception:
        pass
    assert marker.exists()


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_malicious_checkpoint_is_refused_and_nothing_runs(tmp_path, name):
    marker = tmp_path / "pwned"
    payload, write, global_name = PAYLOADS[name]
    src = tmp_path / f"{name}.pth"
    write(src, payload(marker))
    with pytest.raises(UnsafeCheckpointError) as err:
        load_torch_file(src)
    assert str(src) in str(err.value) and global_name in str(err.value), str(err.value)
    assert not marker.exists()


def test_cli_refuses_malicious_checkpoint_with_one_line(tmp_path, capsys):
    marker, src, dst = tmp_path / "pwned", tmp_path / "evil.pth.tar", tmp_path / "out.pdparams"
    _zip_file(src, pickle.dumps({"state_dict": {"w": SystemCall(marker)}}, protocol=2))
    assert main([str(src), str(dst)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and "refusing" in err and "Traceback" not in err
    assert not marker.exists() and not dst.exists()


class _Liar:
    """Stands for a tensor record that claims 100 elements of a 4-element storage."""


class _LyingPickler(torch_writer._TorchPickler):
    def reducer_override(self, obj):
        if isinstance(obj, _Liar):
            ref = torch_writer._StorageRef("0", "FloatStorage", 4)
            return self._global("torch._utils", "_rebuild_tensor_v2"), (ref, 0, (100,), (1,), False, OrderedDict())
        return super().reducer_override(obj)


def test_tensor_cannot_reach_outside_its_storage(tmp_path):
    """Sizes/strides that point past the storage bytes are refused, never read out of bounds."""
    buf = io.BytesIO()
    _LyingPickler(buf, []).dump({"w": _Liar()})
    src = tmp_path / "oob.pth"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/data/0", struct.pack("<4f", 1, 2, 3, 4))
    with pytest.raises(TorchFileError, match="past the end"):
        load_torch_file(src)
