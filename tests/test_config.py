"""Run configs: sections, _base_ inheritance, -o overrides parsed as YAML (never eval'd), clear errors."""
from pathlib import Path

import pytest

from ppcdnv2.engine.config import DEFAULTS, ConfigError, config_diff, load_config, parse_override

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_override_values_are_yaml_typed():
    assert parse_override("train.epochs=5") == (["train", "epochs"], 5)
    assert parse_override("optimizer.lr=4e-1") == (["optimizer", "lr"], 0.4)  # PyYAML alone gives '4e-1'
    assert parse_override("optimizer.lr=0.4") == (["optimizer", "lr"], 0.4)
    assert parse_override("data.mean=[0.5, 0.5, 0.5]") == (["data", "mean"], [0.5, 0.5, 0.5])
    assert parse_override("train.ema=false") == (["train", "ema"], False)
    assert parse_override("model.pretrained=null") == (["model", "pretrained"], None)
    assert parse_override("data.root=/data/imagenet") == (["data", "root"], "/data/imagenet")
    assert parse_override("model.arch.stages=[1,2,3]") == (["model", "arch", "stages"], [1, 2, 3])


def test_override_is_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"
    cfg = load_config(str(CONFIGS / "demo.yaml"), [f"train.output={code}"])
    assert cfg["train"]["output"] == code  # kept as a plain string
    assert not marker.exists()
    with pytest.raises(ConfigError, match="YAML"):
        parse_override("train.output=!!python/object/apply:os.system ['true']")


@pytest.mark.parametrize("bad, match", [
    ("train.epoch=5", "unknown key 'train.epoch'"),
    ("trian.epochs=5", "unknown key 'trian'"),
    ("epochs=5", "section.key"),
    ("train.epochs", "section.key=value"),
    ("train.epochs=0", "train.epochs must be a positive integer"),
    ("data.dataset=mnist", "data.dataset"),
    ("data.interpolation=lanczos", "data.interpolation"),
    ("train.ema_decay=1.5", "ema_decay"),
    ("data=3", "section.key"),
    ("data.mean=3", "data.mean must be a list of 3 numbers"),
    ("optimizer.lr=fast", "optimizer.lr must be a non-negative number"),
])
def test_bad_overrides_name_the_key(bad, match):
    with pytest.raises(ConfigError, match=match):
        load_config(str(CONFIGS / "demo.yaml"), [bad])


def test_unknown_key_in_file_names_file(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"x\.yaml.*epochz"):
        load_config(str(f))
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    (tmp_path / "loop.yaml").write_text("_base_: loop.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(str(tmp_path / "loop.yaml"))


def test_base_inheritance_and_later_wins(tmp_path):
    c = load_config(str(CONFIGS / "cdnv2_c.yaml"))
    a = load_config(str(CONFIGS / "cdnv2_a.yaml"))
    assert set(config_diff(a, c)) == {"model.name", "data.interpolation", "train.output"}
    assert c["data"]["interpolation"] == "bilinear" and a["data"]["interpolation"] == "bicubic"
    assert load_config(str(CONFIGS / "cdnv2_b.yaml"))["data"]["interpolation"] == "bicubic"
    child = tmp_path / "child.yaml"
    child.write_text(f"_base_: {CONFIGS / 'demo.yaml'}\nmodel:\n  arch:\n    growth: [8, 8, 8]\n"
                     "optimizer:\n  weight_decay: 4e-5\n")
    cfg = load_config(str(child), ["train.epochs=2"])
    assert cfg["optimizer"]["weight_decay"] == 4e-5  # a float, although YAML 1.1 reads "4e-5" as text
    assert cfg["model"]["arch"]["growth"] == [8, 8, 8]
    assert cfg["model"]["arch"]["stages"] == load_config(str(CONFIGS / "demo.yaml"))["model"]["arch"]["stages"]
    assert cfg["train"]["epochs"] == 2


def test_imagenet_configs_hold_the_official_recipe():
    """Values from the official train.py defaults / README command and convert_and_eval.py."""
    for name in ("cdnv2_a", "cdnv2_b", "cdnv2_c"):
        c = load_config(str(CONFIGS / f"{name}.yaml"))
        o, s, t, d = c["optimizer"], c["schedule"], c["train"], c["data"]
        assert (o["name"], o["momentum"], o["nesterov"], o["lr"], o["base_batch"]) == ("sgd", 0.9, True, 0.4, 1024)
        assert (o["weight_decay"], o["no_decay_bn_bias"]) == (4e-5, True)
        assert (s["type"], s["warmup_epochs"], s["warmup_lr"], s["min_lr"]) == ("cosine", 5, 0.1, 0.0)
        assert (t["epochs"], t["batch_size"], t["label_smoothing"], t["ema"], t["ema_decay"]) == \
            (350, 1024, 0.1, True, 0.9998)
        assert (d["resize"], d["image_size"], d["auto_augment"], d["reprob"]) == (256, 224, "rand-m9-mstd0.5", 0.2)
        assert c["model"]["name"] == name
        assert d["interpolation"] == ("bilinear" if name == "cdnv2_c" else "bicubic")


def test_every_shipped_config_loads():
    names = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    assert {"cdnv2_a", "cdnv2_b", "cdnv2_c", "cifar10", "cifar100", "demo"} <= set(names)
    for n in names:
        cfg = load_config(str(CONFIGS / f"{n}.yaml"))
        assert set(cfg) == set(DEFAULTS)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_builds_its_model_in_every_form(path):
    """A config whose architecture cannot be built (e.g. channels not divisible by the groups) fails here,
    not hours into a user's run."""
    import paddle

    from ppcdnv2.engine.build import build_model, model_config, resolve_family

    cfg = load_config(str(path))
    family = resolve_family(cfg["model"])
    n = cfg["model"].get("num_classes") or 10
    for form in family.forms_of(model_config(cfg["model"], n)):  # GFNet: two forms only on CondenseNetV2
        model = build_model(cfg["model"], form=form, num_classes=n).eval()
        size = model.cfg.input_size
        with paddle.no_grad():
            out = model(paddle.zeros([1, 3, size, size]))
        steps = () if family.single_output else (model.cfg.T,)  # GFNet: logits of every step
        assert tuple(out.shape) == steps + (1, model.cfg.num_classes)


def test_training_curves_log_loss_and_whole_epochs(tmp_path):
    """One loss spike must not flatten the curve (log scale), and epochs are ticked as integers."""
    from ppcdnv2.engine.runlog import history_figure, plot_history

    history = [{"epoch": e, "train_loss": loss, "val_loss": loss * 0.9, "train_top1": 10.0 * e, "val_top1": 9.0 * e,
                "lr": 0.1 / e} for e, loss in zip(range(1, 4), (250.0, 0.8, 0.5))]
    fig = history_figure(history)
    loss_ax = fig.axes[0]
    assert loss_ax.get_yscale() == "log"
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
    assert plot_history(history, tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    with_zero = [dict(r, train_loss=0.0) for r in history]  # a zero loss cannot go on a log axis
    assert history_figure(with_zero).axes[0].get_yscale() == "linear"
