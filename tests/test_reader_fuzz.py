"""Fuzzing every reader with damaged files (issue: hardening, item 9).

Seeded random mutations (bit flips, truncations, inserted bytes; digit swaps for the JSON program) of small
files of each format we read go through every reader that takes them: the converter CLI and
``load_pretrained`` for weights (zip and legacy ``.pth``, ``.pdparams``, ``.safetensors``), ``load_predictor``
plus a forward pass and the infer CLI for exports (``.json``/``.pdiparams``, ``.onnx``). Each call either
succeeds or fails with our one-line error (``WeightsError``/``ExportError``; CLIs: exit 1, one ``error:`` line,
no traceback), a failed conversion leaves no output file, the marker a pickled ``__reduce__`` payload (planted
in a "trojan" copy of each pickle format) would create never appears, and peak memory stays bounded.

The mutations run in a worker process (this file run as a script) so a native crash or a memory blow-up
fails the test with the seed that caused it instead of taking pytest down; reproduce one with
``python tests/test_reader_fuzz.py corpus DIR`` then ``python tests/test_reader_fuzz.py FMT DIR WORK SEED SEED+1``
(one JSON line per mutation, with what went wrong and each reader's refusal).

What the fuzz found and the readers now refuse: a memo index that grew CPython's memo table to 8-16 GB
(legacy ``.pth``), a counted length that allocated 8 GB and printed a stray ``SystemError`` (``.pdparams``),
a LoD level count that made Paddle allocate 22 GB (``.pdiparams``), multi-line engine errors and
onnxruntime's own exception types escaping at the first forward pass (``.json``, ``.onnx``).
"""
import contextlib
import io
import json
import os
import pickle
import pickletools
import random
import resource
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = "converted_condensenet_cifar50"  # 231k parameters: ~1 MB files, conversions in ~0.1 s
CLASSES = 10
WEIGHT_FORMATS = ("zip", "legacy", "pdparams", "safetensors")
EXPORT_FORMATS = ("pdiparams", "json", "onnx")
FORMATS = WEIGHT_FORMATS + EXPORT_FORMATS
TROJANS = ("zip", "legacy", "pdparams")  # pickle-based: a copy carries a live payload
MEMORY_MARGIN_MB = 400  # over the worker's peak after reading the unmutated files (~1 MB each); the blow-ups
# the fuzz found took 8-22 GB


class Trojan:
    """``__reduce__`` → ``os.system("touch MARKER")``: runs on any unrestricted unpickling."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


# --- the corpus ------------------------------------------------------------------------------------
def make_corpus(root: Path) -> Path:
    """One small file (or export) per format, plus trojan copies of the pickle formats; torch writes the
    torch files, our exporters the rest."""
    import numpy as np
    import paddle
    import torch
    from PIL import Image

    import ppcdnv2
    from ppcdnv2.deploy import default_meta, export_inference
    from ppcdnv2.deploy.export import export_onnx
    from ppcdnv2.registry import family_of
    from ppcdnv2.weights import save_weights, state_dict_numpy

    root.mkdir(parents=True, exist_ok=True)
    marker = root / "PWNED"
    paddle.seed(0)  # the same corpus every run: a seed reproduces its mutation exactly
    model = ppcdnv2.create_model(MODEL, num_classes=CLASSES).eval()
    state = state_dict_numpy(model)
    save_weights(state, root / "w.pdparams")
    save_weights(state, root / "w.safetensors")
    with open(root / "trojan.pdparams", "wb") as f:
        pickle.dump({**state, "evil": Trojan(marker)}, f, protocol=4)
    family = family_of(model)
    official = dict(family.paddle_to_official(state, model))
    torch_state = {k: torch.from_numpy(np.array(v)) for k, v in official.items()}
    torch.save({"state_dict": torch_state}, root / "w_zip.pth")
    torch.save({"state_dict": torch_state}, root / "w_legacy.pth", _use_new_zipfile_serialization=False)
    torch.save({"state_dict": torch_state, "evil": Trojan(marker)}, root / "trojan_zip.pth")
    torch.save({"state_dict": torch_state, "evil": Trojan(marker)}, root / "trojan_legacy.pth",
               _use_new_zipfile_serialization=False)
    meta = default_meta(MODEL, model)
    export_inference(model, root / "exp" / "m", meta)
    export_onnx(model, root / "onnx" / "m.onnx", meta)
    Image.fromarray(np.full((40, 36, 3), 120, np.uint8)).save(root / "img.png")
    assert not marker.exists()
    return root


def _source(corpus: Path, fmt: str, trojan: bool) -> Path:
    """The file of ``corpus`` a mutation of ``fmt`` starts from."""
    return {"zip": corpus / ("trojan_zip.pth" if trojan else "w_zip.pth"),
            "legacy": corpus / ("trojan_legacy.pth" if trojan else "w_legacy.pth"),
            "pdparams": corpus / ("trojan.pdparams" if trojan else "w.pdparams"),
            "safetensors": corpus / "w.safetensors",
            "pdiparams": corpus / "exp" / "m.pdiparams", "json": corpus / "exp" / "m.json",
            "onnx": corpus / "onnx" / "m.onnx"}[fmt]


# --- mutations --------------------------------------------------------------------------------------
def hot_ranges(fmt: str, data: bytes):
    """Byte ranges holding a format's structure (headers, pickles, descriptors) rather than raw weights:
    half of the mutations land there, so most of them hit what a parser must check."""
    n = len(data)
    try:
        if fmt == "zip":
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                infos = zf.infolist()
                ranges = [(i.header_offset, i.header_offset + 96) for i in infos]
                ranges += [(i.header_offset, i.header_offset + 96 + i.compress_size) for i in infos
                           if i.filename.endswith("data.pkl")]
                ranges.append((zf.start_dir, n))
            return ranges
        if fmt in ("legacy", "pdparams"):
            f, ranges = io.BytesIO(data), []
            for _ in range(5 if fmt == "legacy" else 1):  # legacy: magic, protocol, sys info, object, keys
                ops = [(pos, arg) for _, arg, pos in pickletools.genops(f)] + [(f.tell(), None)]
                for (pos, arg), (end, _) in zip(ops, ops[1:]):  # big byte strings are array data: skip them
                    big = isinstance(arg, (bytes, bytearray)) and len(arg) > 64
                    ranges.append((pos, min(end, pos + 9) if big else end))
            if fmt == "legacy":
                ranges.append((f.tell(), f.tell() + 8))  # the first storage's element count
            return ranges
        if fmt == "safetensors":
            return [(0, 8 + struct.unpack("<Q", data[:8])[0])]
        if fmt == "pdiparams":
            return _pdiparams_headers(data)
    except Exception:  # an odd corpus file: mutate uniformly
        pass
    return [(0, min(n, 65536)), (max(0, n - 4096), n)]


def _pdiparams_headers(data: bytes):
    """Each tensor's header in Paddle's parameter stream (versions, LoD, size and TensorDesc protobuf)."""
    from ppcdnv2.deploy.params_check import tensor_headers

    return [(start, end) for start, end, _ in tensor_headers(io.BytesIO(data), len(data))]


def mutate(data: bytes, rng: random.Random, hot, text: bool = False):
    """One seeded mutation: a few bit flips, a truncation or a few inserted bytes (for a text format also a
    digit swapped for another, which keeps JSON valid and changes a shape or attribute)."""
    data = bytearray(data)

    def position():
        if hot and rng.random() < 0.5:
            lo, hi = rng.choice(hot)
            hi = min(hi, len(data))
            if hi > lo:
                return rng.randrange(lo, hi)
        return rng.randrange(len(data))

    kinds = ["flip", "flip", "truncate", "insert"] + (["digit", "digit"] if text else [])
    kind = rng.choice(kinds)
    if kind == "flip":  # distinct bits: two flips of one bit would cancel into a no-op "mutation"
        bits = set()
        for _ in range(rng.randint(1, 4)):
            bits.add((position(), rng.randrange(8)))
        for at, bit in sorted(bits):
            data[at] ^= 1 << bit
    elif kind == "truncate":
        del data[position():]
    elif kind == "insert":
        at = position()
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.choice((1, 2, 4, 8, 13))))
    else:
        digits = [i for i, c in enumerate(data) if 48 <= c <= 57]
        for at in rng.sample(digits, min(rng.randint(1, 3), len(digits))):  # distinct digits, each changed
            data[at] = rng.choice([d for d in b"0123456789" if d != data[at]])
    return bytes(data), kind


# --- the worker ---------------------------------------------------------------------------------------
def _capture(fn):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = fn()
    return rc, err.getvalue()


def _check_api(fn, path: Path, allowed, problems, name, why=None):
    """``fn()`` returns, or raises one of ``allowed`` with a one-line message naming ``path``."""
    try:
        fn()
        return "ok"
    except allowed as e:
        msg = str(e)
        if "\n" in msg.strip() or path.name not in msg:
            problems.append(f"{name}: {type(e).__name__} message not one line naming the file: {msg[:300]!r}")
        if why is not None:
            why.append(msg.replace(str(path.parent), "")[:120])
        return "refused"
    except BaseException as e:  # noqa: B902 - anything else escaping is the bug being looked for
        import traceback

        tb = traceback.format_exc().strip().splitlines()
        problems.append(f"{name}: {type(e).__name__} escaped: {str(e)[:200]!r} at {' | '.join(tb[-3:])}")
        return "escaped"


def _check_cli(argv_fn, main, out_dir: Path, dst, problems, name):
    """``main(argv)`` exits 0 (``dst`` written) or 1 with one ``error:`` line and nothing left in ``out_dir``."""
    try:
        rc, err = _capture(lambda: main(argv_fn()))
    except BaseException as e:  # noqa: B902
        problems.append(f"{name}: {type(e).__name__} escaped the CLI: {str(e)[:200]!r}")
        return "escaped"
    lines = err.strip().splitlines()
    if rc == 1:
        if len(lines) != 1 or "error:" not in lines[0] or "Traceback" in err:
            problems.append(f"{name}: exit 1 but stderr is not one error line: {err[-400:]!r}")
        if dst is not None and any(out_dir.iterdir()):
            problems.append(f"{name}: failed but left {sorted(p.name for p in out_dir.iterdir())}")
        return "refused"
    if rc != 0:
        problems.append(f"{name}: exit {rc}; stderr {err[-300:]!r}")
    elif dst is not None and not Path(dst).is_file():
        problems.append(f"{name}: exit 0 but no {dst}")
    return "ok"


class _Readers:
    """Every reader that takes a file of ``fmt``; each call appends what went wrong to ``problems``."""

    def __init__(self, fmt, corpus: Path, work: Path):
        self.fmt, self.corpus, self.work = fmt, corpus, work
        if fmt in WEIGHT_FORMATS:
            import ppcdnv2
            from ppcdnv2.convert.cli import main
            from ppcdnv2.weights import WeightsError, load_pretrained

            self.model = ppcdnv2.create_model(MODEL, num_classes=CLASSES)
            self.convert, self.load_pretrained, self.errors = main, load_pretrained, (WeightsError,)
        else:
            import numpy as np

            from ppcdnv2.deploy.cli import infer_main
            from ppcdnv2.deploy.export import ExportError
            from ppcdnv2.deploy.predictor import load_predictor
            from ppcdnv2.weights import WeightsError

            self.infer, self.load_predictor = infer_main, load_predictor
            self.errors = (ExportError, WeightsError)
            self.x = np.zeros((1, 3, 32, 32), np.float32)

    def run(self, path: Path, problems, why=None):
        outcomes = []
        if self.fmt in WEIGHT_FORMATS:
            out_dir = self.work / "out"
            shutil.rmtree(out_dir, ignore_errors=True)
            out_dir.mkdir()
            dst = out_dir / ("w.pdparams" if self.fmt in ("zip", "legacy") else "w.pth")
            outcomes.append(_check_cli(lambda: [str(path), str(dst)], self.convert, out_dir, dst, problems,
                                       "convert CLI"))
            outcomes.append(_check_api(lambda: self.load_pretrained(self.model, path), path, self.errors,
                                       problems, "load_pretrained", why))
        else:
            target = path if self.fmt == "onnx" else path.with_name("m")
            backend = "onnx" if self.fmt == "onnx" else "paddle"

            def predict():
                self.load_predictor(target, backend=backend, threads=1)(self.x)

            outcomes.append(_check_api(predict, path, self.errors, problems, "load_predictor", why))
            argv = ["-m", str(target), str(self.corpus / "img.png"), "--backend", backend, "--threads", "1"]
            outcomes.append(_check_cli(lambda: argv, self.infer, self.work, None, problems, "infer CLI"))
        return outcomes


def _peak_mb() -> int:
    """This process's own peak RSS in MiB: ``VmHWM`` starts afresh at exec, while ``ru_maxrss`` keeps the
    peak of the forking parent (a pytest process that grew to gigabytes hides any blow-up here)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def worker(fmts, corpus: Path, work: Path, first: int, stop: int):
    """Mutations ``first..stop-1`` of each format in ``fmts``; one JSON line per mutation (a ``start`` line
    before it, so a crash names its seed), then the peak memory against that after the unmutated reads."""
    marker = corpus / "PWNED"
    readers = {fmt: _Readers(fmt, corpus, work) for fmt in fmts}
    for fmt in fmts:  # the unmutated files first: each must read (a trojan must be refused)
        for trojan in ([False, True] if fmt in TROJANS else [False]):
            src = _source(corpus, fmt, trojan)
            problems = []
            outcomes = readers[fmt].run(_stage(fmt, src, src.read_bytes(), work / "clean"), problems)
            if problems or any(o != ("refused" if trojan else "ok") for o in outcomes):
                print(json.dumps({"fmt": fmt, "seed": -1, "trojan": trojan,
                                  "problems": problems or [f"unmutated file: {outcomes}"]}), flush=True)
    base_mb = _peak_mb()
    hot = {}
    for fmt in fmts:
        for seed in range(first, stop):
            rng = random.Random(f"{fmt}:{seed}")
            trojan = fmt in TROJANS and seed % 4 == 3
            src = _source(corpus, fmt, trojan)
            original = src.read_bytes()
            if src not in hot:
                hot[src] = hot_ranges(fmt, original)
            data, kind = mutate(original, rng, hot[src], text=fmt == "json")
            print(json.dumps({"start": seed, "fmt": fmt, "kind": kind}), flush=True)
            problems, why = [], []
            outcomes = readers[fmt].run(_stage(fmt, src, data, work / "case"), problems, why)
            if marker.exists():
                problems.append("the trojan's marker file appeared: pickled code ran")
            print(json.dumps({"fmt": fmt, "seed": seed, "kind": kind, "trojan": trojan, "outcomes": outcomes,
                              "why": why, "problems": problems, "peak_mb": _peak_mb()}), flush=True)
    print(json.dumps({"done": True, "base_mb": base_mb, "peak_mb": _peak_mb()}), flush=True)


def _stage(fmt, src: Path, data: bytes, folder: Path) -> Path:
    """``data`` in place of ``src`` in a fresh copy of its folder's files (an export needs its siblings)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if fmt in EXPORT_FORMATS:
        for sibling in src.parent.iterdir():
            shutil.copy(sibling, folder / sibling.name)
    path = folder / src.name
    path.write_bytes(data)
    return path


if __name__ == "__main__":  # the worker: FMT[,FMT...] CORPUS WORK FIRST STOP, or: corpus CORPUS
    import warnings

    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(REPO))
    if sys.argv[1] == "corpus":
        make_corpus(Path(sys.argv[2]))
    else:
        worker(sys.argv[1].split(","), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    sys.exit(0)


# --- the tests ------------------------------------------------------------------------------------------
import pytest  # noqa: E402 (the worker above runs without pytest)

QUICK = 10  # mutations per format in the quick run (seeds 0..9)
SLOW = 200  # mutations per format in the slow run (seeds 10..209)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    pytest.importorskip("torch")  # writes the torch files; the readers run without it
    pytest.importorskip("paddle2onnx")  # writes the .onnx, which onnxruntime reads
    pytest.importorskip("onnxruntime")
    return make_corpus(tmp_path_factory.mktemp("fuzz_corpus"))


def _fuzz(corpus: Path, work: Path, fmts, first: int, stop: int, timeout: int):
    """Run the worker; fail with the seeds (and how to rerun them) of anything that went wrong."""
    p = subprocess.run([sys.executable, __file__, ",".join(fmts), str(corpus), str(work), str(first), str(stop)],
                       cwd=REPO, capture_output=True, text=True, timeout=timeout)
    records = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    started = [r for r in records if "start" in r]
    done = [r for r in records if r.get("done")]
    rerun = "python tests/test_reader_fuzz.py {fmt} CORPUS WORK {seed} {stop}"
    if p.returncode != 0 or not done:
        last = started[-1] if started else {"fmt": fmts[0], "start": first}
        pytest.fail(f"the worker died (exit {p.returncode}) on {last}; rerun: "
                    f"{rerun.format(fmt=last['fmt'], seed=last['start'], stop=last['start'] + 1)}\n"
                    f"{p.stderr[-2000:]}")
    bad = [r for r in records if r.get("problems")]
    assert not bad, "\n".join(f"{rerun.format(fmt=r['fmt'], seed=r['seed'], stop=r['seed'] + 1)}: "
                              f"{json.dumps(r)[:800]}" for r in bad[:10])
    assert not (corpus / "PWNED").exists()
    cases = [r for r in records if "outcomes" in r]
    assert len(cases) == len(fmts) * (stop - first)
    peak, base = done[0]["peak_mb"], done[0]["base_mb"]
    assert peak < base + MEMORY_MARGIN_MB, f"peak RSS {peak} MiB, {base} MiB after reading the unmutated files"
    return cases


def test_trojan_payload_is_live_with_plain_pickle(corpus):
    """Control: the planted payload runs under an unrestricted unpickler (so 'the marker never appears'
    means the readers refused it, not that it was inert)."""
    marker = corpus / "PWNED"
    try:
        with open(corpus / "trojan.pdparams", "rb") as f:
            pickle.load(f)
        assert marker.exists()
    finally:
        marker.unlink(missing_ok=True)


def test_mutations_hit_structure(corpus):
    """Control: the hot ranges lie inside each file, and the seeded mutations are distinct and reproducible."""
    for fmt in FORMATS:
        data = _source(corpus, fmt, False).read_bytes()
        hot = hot_ranges(fmt, data)
        assert hot and all(0 <= lo < min(hi, len(data)) for lo, hi in hot), fmt  # (mutate clamps hi)
        a = [mutate(data, random.Random(f"{fmt}:{i}"), hot, fmt == "json") for i in range(10)]
        assert a == [mutate(data, random.Random(f"{fmt}:{i}"), hot, fmt == "json") for i in range(10)]
        assert len({m for m, _ in a}) == 10 and data not in {m for m, _ in a}, fmt
    assert len(_pdiparams_headers(_source(corpus, "pdiparams", False).read_bytes())) > 100


def test_quick_fuzz(corpus, tmp_path):
    """A few mutations of every format through every reader that takes it, in one worker (the slow run
    does hundreds per format)."""
    cases = _fuzz(corpus, tmp_path, FORMATS, 0, QUICK, timeout=600)
    for fmt in FORMATS:
        assert any("refused" in c["outcomes"] for c in cases if c["fmt"] == fmt), fmt


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzz(corpus, tmp_path, fmt):
    """Hundreds of mutations of one format: never a traceback, partial output, code execution or memory blow-up;
    both outcomes happen (structure refused, a flipped weight read)."""
    cases = _fuzz(corpus, tmp_path, [fmt], QUICK, QUICK + SLOW, timeout=600)
    outcomes = [o for c in cases for o in c["outcomes"]]
    assert outcomes.count("refused") >= SLOW // 4 and "ok" in outcomes


def _truncated(corpus: Path, fmt: str, folder: Path) -> Path:
    src = _source(corpus, fmt, False)
    data = src.read_bytes()
    lo, hi = random.Random(fmt).choice(hot_ranges(fmt, data))
    return _stage(fmt, src, data[:random.Random(fmt).randrange(lo, min(hi, len(data)))], folder)


def test_real_cli_processes_print_one_line(corpus, tmp_path):
    """The tools as a user runs them (native stderr included): a damaged torch file, parameters file and ONNX
    model each give exit 1 and one ``error:`` line naming the file, no traceback, no output file."""
    torch_src = _truncated(corpus, "legacy", tmp_path / "legacy")
    runs = [([str(REPO / "tools" / "convert_torch_weights.py"), str(torch_src), str(tmp_path / "out.pdparams")],
             torch_src)]
    for fmt in ("pdiparams", "onnx"):
        damaged = _truncated(corpus, fmt, tmp_path / fmt)
        model = damaged if fmt == "onnx" else damaged.with_name("m")
        runs.append(([str(REPO / "tools" / "infer.py"), "-m", str(model), str(corpus / "img.png"), "--threads", "1"],
                     damaged))
    for argv, damaged in runs:
        p = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=300)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1 and "error:" in lines[0] and damaged.name in lines[0], p.stderr
    assert not (tmp_path / "out.pdparams").exists()
