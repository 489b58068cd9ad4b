"""Nothing lost, nothing silently wrong, one line instead of a traceback (issue: hardening every tool).

Each test drives a tool the way a user would and checks the outcome: refused with one line naming the file
and the way on, or done right; never a partial output.
"""
import json
from pathlib import Path

import numpy as np
import pytest

import ppcdnv2
from ppcdnv2.engine.cli import train_main

REPO = Path(__file__).resolve().parents[1]
TINY = ["train.progress_bar=false", "data.limit_train=64", "data.limit_val=32", "train.epochs=2",
        "schedule.warmup_epochs=0", "eval.batch_size=32", "model.arch.stages=[1,1,1]", "model.arch.growth=[4,8,8]"]


def _train(out, *extra):
    argv = ["-c", str(REPO / "configs" / "demo.yaml"), "-o", f"train.output={out}"]
    for o in TINY:
        argv += ["-o", o]
    return train_main(argv + list(extra))


def test_training_into_a_finished_run_is_refused_then_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert _train(out) == 1  # the run is there: refused (1: the input), nothing touched
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "epoch 2, step 4" in err and "--resume" in err and "train.output" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()} == before
    (out / "checkpoint_epoch1.safetensors").write_bytes(b"stale")  # an old run's extra file
    assert _train(out, "--overwrite") == 0
    assert not (out / "checkpoint_epoch1.safetensors").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_form"]["count"] == 32
    with pytest.raises(SystemExit):  # both at once is a usage error
        _train(out, "--overwrite", "--resume")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "run"
    assert _train(out) == 0
    return out


def test_ctrl_c_says_where_to_resume(tmp_path, monkeypatch, capsys):
    import ppcdnv2.engine.trainer as trainer

    calls = {"n": 0}
    real = trainer._train_step

    def interrupted_step(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 2 of 2 steps each: the epoch-1 checkpoint exists
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(trainer, "_train_step", interrupted_step)
    assert _train(tmp_path / "run") == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted; the last checkpoint is epoch 1 (step 2)" in err[0] and "--resume" in err[0]


def test_training_output_that_cannot_be_written_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert _train(blocker / "run") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write") and "a_file" in err[0]


def test_user_errors_exit_1_and_usage_errors_exit_2(tmp_path, capsys):
    assert train_main(["-c", str(REPO / "configs" / "demo.yaml"), "-o", "train.epochs=0"]) == 1
    with pytest.raises(SystemExit) as e:
        train_main(["--no-such-option"])
    assert e.value.code == 2


# --- weights --------------------------------------------------------------------------------------
def test_nonfinite_weights_are_refused_at_conversion(demo_run, tmp_path, capsys):
    from ppcdnv2.convert.cli import main as convert
    from ppcdnv2.weights import read_weights, save_weights

    state = read_weights(demo_run / "model_condensed.pdparams")
    key = sorted(k for k in state if k.endswith("conv.weight"))[0]
    state[key] = state[key].copy()
    state[key].flat[0] = np.nan
    bad = save_weights(state, tmp_path / "nan.pdparams")
    cfg = str(demo_run / "config.yaml")
    assert convert([str(bad), str(tmp_path / "nan.pth"), "--arch", cfg]) == 1
    err = capsys.readouterr().err
    assert key in err and "NaN/Inf" in err and "--allow-nonfinite" in err and not (tmp_path / "nan.pth").exists()
    assert convert([str(bad), str(tmp_path / "nan.pth"), "--arch", cfg, "--allow-nonfinite"]) == 0


def test_nonfinite_output_is_reported_and_json_stays_valid(demo_run, tmp_path, capsys):
    from PIL import Image

    from ppcdnv2.deploy.cli import infer_main
    from ppcdnv2.weights import read_weights, save_weights

    state = read_weights(demo_run / "model_condensed.pdparams")
    state["classifier.bias"] = np.full_like(state["classifier.bias"], np.nan)
    save_weights(state, tmp_path / "nan.pdparams")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "img.png")
    from ppcdnv2.deploy import default_meta, export_inference
    from ppcdnv2.engine.build import build_model
    from ppcdnv2.engine.config import load_config
    from ppcdnv2.weights import load_state_dict

    cfg = load_config(str(demo_run / "config.yaml"))
    model = load_state_dict(build_model(cfg["model"], "converted", 10), state).eval()
    files = export_inference(model, tmp_path / "nan_model", default_meta("demo", model))
    capsys.readouterr()
    assert infer_main(["-m", str(files.prefix), str(tmp_path / "img.png"), "--json", "-k", "2"]) == 1
    out, err = capsys.readouterr()
    record = json.loads(out.strip())  # strict JSON: no NaN tokens
    assert record["top"][0]["prob"] is None and "not finite" in err


def test_reverse_export_of_a_custom_model_without_arch_is_one_line(demo_run, tmp_path, capsys):
    pytest.importorskip("torch")
    from ppcdnv2.convert.cli import main as convert

    src, dst = demo_run / "model_condensed.pdparams", tmp_path / "back.pth"
    assert convert([str(src), str(dst), "--verify"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.yaml" in err[0] and not dst.exists()
    assert convert([str(src), str(dst), "--verify", "--arch", str(demo_run / "config.yaml")]) == 0


def test_converter_refuses_odd_suffixes_and_tolerances(demo_run, tmp_path, capsys):
    from ppcdnv2.convert.cli import main as convert

    src, arch = str(demo_run / "model_condensed.pdparams"), str(demo_run / "config.yaml")
    assert convert([src, str(tmp_path / "x.dat"), "--arch", arch]) == 1
    assert convert([src, str(tmp_path / "x.pth"), "--arch", arch, "--tol", "0"]) == 1
    err = capsys.readouterr().err
    assert "DST must end in" in err and "--tol must be a positive" in err
    assert not list(tmp_path.iterdir())


def test_create_model_argument_errors():
    from ppcdnv2.weights import WeightsError

    with pytest.raises(WeightsError, match="nothing is downloaded"):
        ppcdnv2.create_model("cdnv2_a", pretrained="https://example.org/cdnv2_a.pth")
    with pytest.raises(WeightsError, match="local weights file"):
        ppcdnv2.create_model("cdnv2_a", pretrained=True)
    for n in (-1, 2.5, True):
        with pytest.raises(ValueError, match="num_classes"):
            ppcdnv2.create_model("rexnet_100", num_classes=n)
    model = ppcdnv2.create_model("cdnv2_a")
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="progress"):
            model.set_progress(p)


# --- deployment -----------------------------------------------------------------------------------
def test_failed_export_check_leaves_nothing(demo_run, tmp_path, monkeypatch, capsys):
    import ppcdnv2.deploy.cli as dcli

    monkeypatch.setattr(dcli, "PADDLE_TOL", -1.0)  # every check fails
    out = tmp_path / "exp" / "m"
    assert dcli.export_main(["cdnv2_a", "-o", str(out), "--check", "--no-onnx"]) == 1
    assert "--check failed" in capsys.readouterr().err
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_corrupt_exported_files_are_one_line(tmp_path, capsys):
    from ppcdnv2.deploy import export_inference
    from ppcdnv2.deploy.cli import infer_main
    from PIL import Image

    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "img.png")
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07not a protobuf at all" * 10)
    files = export_inference(ppcdnv2.create_model("rexnet_090").eval(), tmp_path / "m")
    files.params_file.write_bytes(files.params_file.read_bytes()[:1000])  # truncated parameters
    for model in (tmp_path / "bad.onnx", files.prefix):
        capsys.readouterr()
        assert infer_main(["-m", str(model), str(tmp_path / "img.png")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ("bad.onnx" in err[0] or "m.pdiparams" in err[0]) and "export it again" in err[0]


def test_full_disk_while_writing_safetensors_is_one_line(demo_run, tmp_path, monkeypatch, capsys):
    import safetensors.numpy

    from ppcdnv2.convert.cli import main as convert

    def full(*a, **k):
        raise safetensors.SafetensorError("Error while serializing: IoError(No space left on device)")

    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    rexnet = REPO / ".." / "shared" / "fixtures" / "rexnet" / "rexnet_1.0x_s0.pth"
    if not rexnet.exists():
        pytest.skip("fixture missing")
    assert convert([str(rexnet), str(tmp_path / "out.safetensors")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out.safetensors" in err[0] and "space" in err[0]
    assert not list(tmp_path.iterdir())


def test_infer_on_a_folder_with_a_broken_image_classifies_the_rest(tmp_path, capsys):
    from PIL import Image

    from ppcdnv2.deploy import export_inference
    from ppcdnv2.deploy.cli import infer_main

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(folder / f"ok{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    Image.new("1", (20000, 20000)).save(folder / "bomb.png")  # 48 KB declaring 400 M pixels
    files = export_inference(ppcdnv2.create_model("rexnet_090").eval(), tmp_path / "m")
    for backend in ("pil", "cv2"):
        capsys.readouterr()
        assert infer_main(["-m", str(files.prefix), str(folder), "--json", "--backend", "paddle",
                           "--image-backend", backend]) == 1
        out, err = capsys.readouterr()
        assert sorted(json.loads(line)["image"].rsplit("/", 1)[1] for line in out.splitlines()) == \
            ["ok0.png", "ok1.png", "ok2.png"]
        err = err.strip().splitlines()
        assert len(err) == 2 and any("broken.jpg" in e for e in err) and any("bomb.png" in e for e in err)
        assert all("Traceback" not in e for e in err)
    assert infer_main(["-m", str(files.prefix), str(folder), "--backend", "paddle", "--skip-bad"]) == 0
    assert "warning" in capsys.readouterr().err


def test_eval_maps_a_few_class_folders_to_the_model_classes_or_refuses(tmp_path, capsys):
    """A 1000-class model on a folder of 2 classes: folders named after the model's classes are matched by
    name (top-1 meaningful); folders it cannot match are refused instead of scoring folder indices."""
    from PIL import Image

    from ppcdnv2.deploy.classify import imagenet_classes
    from ppcdnv2.engine.cli import eval_main
    from ppcdnv2.weights import save_weights, state_dict_numpy

    names = imagenet_classes()
    model = ppcdnv2.create_model("rexnet_090")
    state = state_dict_numpy(model)
    bias = np.zeros_like(state["output.1.bias"])
    bias[names.index("tabby")] = 1e4  # this model answers "tabby" for every image
    state["output.1.bias"] = bias
    weights = save_weights(state, tmp_path / "w.pdparams")
    for cls in ("tabby", "espresso"):
        d = tmp_path / "data" / "val" / cls
        d.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((64, 64, 3), 80 * i, np.uint8)).save(d / f"{i}.png")
    args = ["--weights", str(weights), "-c", str(REPO / "configs" / "rexnet_100.yaml"), "--no-progress",
            "-o", "model.name=rexnet_090", "-o", f"data.root={tmp_path / 'data'}", "-o", "data.num_workers=0",
            "-b", "4", "--json", str(tmp_path / "r.json")]
    assert eval_main(args) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["count"] == 4 and report["top1"] == pytest.approx(50.0)  # the 2 tabby images
    assert "mapped to the model's classes" in capsys.readouterr().out
    (tmp_path / "data" / "val" / "tabby").rename(tmp_path / "data" / "val" / "n02123045")
    assert eval_main(args) == 1
    err = capsys.readouterr().err
    assert "n02123045" in err and "--labels" in err
    labels = tmp_path / "synsets.txt"  # ids in index order: tabby's line holds its synset
    labels.write_text("\n".join("n02123045" if n == "tabby" else n for n in names) + "\n")
    assert eval_main(args + ["--labels", str(labels)]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["top1"] == pytest.approx(50.0)


@pytest.mark.parametrize("text", ["1", "[1, 2]", "{\"preprocess\": 3}", "{\"model\": \"x\", \"bogus\": 1}"])
def test_export_metadata_that_is_json_but_not_ours_is_one_clear_error(tmp_path, text):
    from ppcdnv2.deploy.export import ExportError, ExportMeta

    path = tmp_path / "m.meta.json"
    path.write_text(text)
    with pytest.raises(ExportError, match="not a readable export metadata file"):
        ExportMeta.load(path)
