"""CondenseNet (V1) in the trainer: upstream's recipes as configs, family-aware model building, a short
training run that ends condensed (predictions checked against the training form), the group-lasso term,
and tools/eval.py on V1 weights (our checkpoint, and an upstream-style released .pth.tar)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from ppcdnv2.engine.build import build_model, model_config
from ppcdnv2.engine.config import ConfigError, config_diff, load_config
from ppcdnv2.families.condensenet import CondenseNetConfig
from ppcdnv2.families.condensenet.v1 import CondenseNet
from ppcdnv2.families.condensenet.v2 import CondenseNetV2

pytestmark = pytest.mark.slow  # training runs, subprocesses: outside the quick subset (-m "not slow")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# A small CIFAR-stem V1 on the demo digits (configs/demo.yaml's data, optimizer and EMA); ``arch=null``
# first drops the demo's CondenseNetV2 fields.
V1_ARCH = "model.arch={stem: cifar, stages: [1, 2, 2], growth: [4, 8, 16]}"
V1_DEMO = ["model.family=condensenet", "model.arch=null", V1_ARCH]


# --- the recipes -------------------------------------------------------------------------------
# Typed from upstream (ShichenLiu/CondenseNet): main.py defaults (--epochs 120, -b 256, --lr 0.1,
# --lr-type cosine, --momentum 0.9, --weight-decay 1e-4, nesterov=True, SGD over model.parameters(),
# nn.CrossEntropyLoss, --dropout-rate 0, RandomSizedCrop(224) + RandomHorizontalFlip, Scale(256) +
# CenterCrop(224)); the paper's group-lasso weight 1e-5 on ImageNet; script.sh's CIFAR command
# (-b 64 --epochs 300 --lr-type cosine --stages 14-14-14 --growth 8-16-32, C=G=4) and main.py's CIFAR
# augmentation (RandomCrop(32, padding=4) + flip) and normalisation.
IMAGENET = dict(epochs=120, batch=256, lr=0.1, momentum=0.9, wd=1e-4, lasso=1e-5)
CIFAR = dict(epochs=300, batch=64, lr=0.1, momentum=0.9, wd=1e-4, lasso=0.0)


def _check_common_recipe(c, recipe):
    o, s, t = c["optimizer"], c["schedule"], c["train"]
    assert (o["name"], o["nesterov"], o["momentum"]) == ("sgd", True, recipe["momentum"])
    assert o["lr"] * t["batch_size"] / o["base_batch"] == pytest.approx(recipe["lr"])  # no scaling at the recipe's batch
    assert (o["weight_decay"], o["no_decay_bn_bias"]) == (recipe["wd"], False)  # every parameter decays upstream
    assert (s["type"], s["warmup_epochs"], s["min_lr"]) == ("cosine", 0, 0.0)
    assert (t["epochs"], t["batch_size"], t["lasso"]) == (recipe["epochs"], recipe["batch"], recipe["lasso"])
    assert (t["label_smoothing"], t["ema"]) == (0.0, False)
    assert c["export"]["condense"] is True


@pytest.mark.parametrize("name, groups", [("condensenet74_c4_g4", 4), ("condensenet74_c8_g8", 8)])
def test_imagenet_configs_hold_upstreams_recipe(name, groups):
    c = load_config(str(CONFIGS / f"{name}.yaml"))
    _check_common_recipe(c, IMAGENET)
    d = c["data"]
    assert (d["dataset"], d["image_size"], d["resize"]) == ("imagenet", 224, 256)
    assert (d["interpolation"], d["train_interpolation"]) == ("bilinear", "bilinear")  # torchvision defaults
    assert (d["scale"], d["ratio"], d["hflip"]) == ([0.08, 1.0], [0.75, 4 / 3], 0.5)
    assert (d["auto_augment"], d["reprob"], d["color_jitter"]) == (None, 0.0, 0.0)
    assert d["mean"] == [0.485, 0.456, 0.406] and d["std"] == [0.229, 0.224, 0.225]
    cfg = model_config(c["model"])
    assert isinstance(cfg, CondenseNetConfig)
    # CondenseNet-74: stages 4-6-8-10-8, growth 8-16-32-64-128 (upstream README), C = G
    assert (cfg.stages, cfg.growth, cfg.bottleneck) == ((4, 6, 8, 10, 8), (8, 16, 32, 64, 128), 4)
    assert (cfg.group_1x1, cfg.group_3x3, cfg.condense_factor) == (groups, groups, groups)
    assert (cfg.dropout_rate, cfg.num_classes, cfg.stem) == (0.0, 1000, "imagenet")


def test_c8_config_inherits_everything_but_the_model():
    c4, c8 = (load_config(str(CONFIGS / f"condensenet74_c{g}_g{g}.yaml")) for g in (4, 8))
    assert set(config_diff(c4, c8)) == {"model.name", "train.output"}


def test_cifar_config_holds_upstreams_recipe():
    c = load_config(str(CONFIGS / "condensenet_cifar86.yaml"))
    _check_common_recipe(c, CIFAR)
    d = c["data"]
    assert (d["dataset"], d["image_size"], d["pad_crop"], d["hflip"]) == ("cifar10", 32, 4, 0.5)
    assert d["mean"] == [0.4914, 0.4824, 0.4467] and d["std"] == [0.2471, 0.2435, 0.2616]  # main.py's
    cfg = model_config(c["model"], num_classes=10)
    assert isinstance(cfg, CondenseNetConfig)
    assert (cfg.stages, cfg.growth, cfg.stem, cfg.num_classes) == ((14, 14, 14), (8, 16, 32), "cifar", 10)
    assert (cfg.group_1x1, cfg.group_3x3, cfg.condense_factor) == (4, 4, 4)
    # CIFAR-100 and other depths, as the config's comment says
    c100 = load_config(str(CONFIGS / "condensenet_cifar86.yaml"), ["data.dataset=cifar100"])
    assert model_config(c100["model"], num_classes=100).num_classes == 100
    deeper = load_config(str(CONFIGS / "condensenet_cifar86.yaml"), ["model.name=condensenet_cifar110"])
    assert model_config(deeper["model"], 10).stages == (18, 18, 18)
    custom = load_config(str(CONFIGS / "condensenet_cifar86.yaml"),
                         ["model.name=null", "model.family=condensenet",
                          "model.arch={stem: cifar, stages: [5, 5, 5], growth: [8, 16, 32]}"])
    assert model_config(custom["model"], 10) == CondenseNetConfig(stages=(5, 5, 5), growth=(8, 16, 32), stem="cifar",
                                                                  num_classes=10)


def test_v1_schedule_is_upstreams_cosine_per_iteration():
    from ppcdnv2.engine.optim import LRSchedule, scaled_lrs

    c = load_config(str(CONFIGS / "condensenet74_c4_g4.yaml"))
    lr, warm = scaled_lrs(c["optimizer"], c["schedule"], c["train"]["batch_size"])
    n_batch, epochs = 7, 120
    s = LRSchedule(lr, warm, c["schedule"]["warmup_epochs"], c["train"]["epochs"], n_batch, c["schedule"]["type"],
                   c["schedule"]["min_lr"])

    def upstream(epoch, batch):  # main.py adjust_learning_rate, method='cosine'
        t_total, t_cur = epochs * n_batch, (epoch % epochs) * n_batch + batch
        return 0.5 * 0.1 * (1 + math.cos(math.pi * t_cur / t_total))

    for epoch, batch in [(0, 0), (0, 3), (1, 0), (59, 6), (119, 6)]:
        assert s(epoch * n_batch + batch) == pytest.approx(upstream(epoch, batch), abs=1e-12)


def test_v1_weight_decay_reaches_every_trainable_parameter():
    from ppcdnv2.engine.optim import param_groups

    c = load_config(str(CONFIGS / "condensenet_cifar86.yaml"), ["model.name=condensenet_cifar50"])
    model = build_model(c["model"], "train", 10)
    groups = param_groups(model, c["optimizer"]["weight_decay"], c["optimizer"]["no_decay_bn_bias"])
    trainable = [p for p in model.parameters() if not p.stop_gradient]
    assert len(groups) == 1 and groups[0]["weight_decay"] == 1e-4 and len(groups[0]["params"]) == len(trainable)


# --- family-aware building ----------------------------------------------------------------------
def test_model_name_of_either_family_and_family_for_custom_arch():
    demo = load_config(str(CONFIGS / "demo.yaml"))
    assert isinstance(build_model(demo["model"], "train", 10), CondenseNetV2)  # default family: condensenetv2
    for name, cls, form in [("condensenet_cifar50", CondenseNet, "train"), ("cdnv2_a", CondenseNetV2, "train"),
                            ("converted_condensenet_cifar50", CondenseNet, "converted")]:
        c = load_config(str(CONFIGS / "demo.yaml"), [f"model.name={name}", "model.arch=null"])
        m = build_model(c["model"], form, 10)
        assert type(m) is cls and m.form == form and m.cfg.num_classes == 10
    v1 = load_config(str(CONFIGS / "demo.yaml"), V1_DEMO)
    assert v1["model"]["arch"] == {"stem": "cifar", "stages": [1, 2, 2], "growth": [4, 8, 16]}  # V2 fields gone
    m = build_model(v1["model"], "train", 10)
    assert type(m) is CondenseNet and m.cfg.stages == (1, 2, 2) and m.cfg.group_1x1 == 4


@pytest.mark.parametrize("overrides, match", [
    (["model.family=condensenet"], "trans_factor.*known fields of a condensenet"),  # demo's V2 arch kept
    (["model.name=condensenet_cifar50", "model.family=condensenetv2", "model.arch=null"],
     "is a condensenet preset"),
    (["model.name=condensenet_cifar51", "model.arch=null"], "not a registered model"),
])
def test_family_mistakes_are_config_errors(overrides, match):
    c = load_config(str(CONFIGS / "demo.yaml"), overrides)
    with pytest.raises(ConfigError, match=match):
        build_model(c["model"], "train", 10)


def test_unknown_family_fails_when_loading():
    with pytest.raises(ConfigError, match="model.family"):
        load_config(str(CONFIGS / "demo.yaml"), ["model.family=condensenetv3"])


# --- group lasso -------------------------------------------------------------------------------
def test_lasso_term_enters_the_training_loss():
    """The trainer's loss is cross-entropy + train.lasso x the LGC layers' group lasso (upstream's rule)."""
    from ppcdnv2.engine.trainer import _backward

    paddle.seed(0)
    model = CondenseNet(CondenseNetConfig(stages=(1, 2, 2), growth=(4, 8, 16), num_classes=10, stem="cifar"))
    model.train()
    x = paddle.randn([8, 3, 32, 32])
    y = paddle.to_tensor(np.arange(8) % 10)
    lasso = float(model.lasso_loss())
    # upstream's LearnedGroupConv.lasso_loss, from its formula: per group, sqrt of the summed squares
    # of each input channel's weights over the group's output rows (rows g, g + G, ...), summed
    expected = 0.0
    for layer in model.learned_layers():
        w = (layer.conv.weight.numpy() * layer._mask.numpy())[:, :, 0, 0] ** 2
        groups = layer.groups
        expected += np.sqrt(np.maximum(w.reshape(-1, groups, w.shape[1]).sum(0), 1e-6)).sum()
    assert lasso > 0 and lasso == pytest.approx(expected, rel=1e-5)
    plain, _, _ = _backward(model, model, None, x, y, 1, 1, 0.0, 0.0, False)
    model.clear_gradients()
    with_lasso, _, _ = _backward(model, model, None, x, y, 1, 1, 0.0, 1e-3, False)
    assert with_lasso / 8 - plain / 8 == pytest.approx(1e-3 * lasso, rel=1e-3)


def _train(out, *overrides, timeout=600):
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), "-c", str(CONFIGS / "demo.yaml")]
    for o in ["train.progress_bar=false", f"train.output={out}", *V1_DEMO, *overrides]:
        cmd += ["-o", o]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    return p.stdout + p.stderr


def test_lasso_enters_the_loss_of_a_v1_training_run(tmp_path):
    """Through tools/train.py (debug.dump_grads: one step's loss and gradients, then stop)."""
    _train(tmp_path / "plain", f"debug.dump_grads={tmp_path / 'g0'}", "train.lasso=0.0")
    _train(tmp_path / "lasso", f"debug.dump_grads={tmp_path / 'g1'}", "train.lasso=1e-3")
    g0, g1 = np.load(tmp_path / "g0" / "grads_rank0.npz"), np.load(tmp_path / "g1" / "grads_rank0.npz")
    # the same initial model as the run's (seeded as the trainer seeds it), for the lasso value
    cfg = load_config(str(CONFIGS / "demo.yaml"), V1_DEMO)
    paddle.seed(cfg["train"]["seed"])
    lasso = float(build_model(cfg["model"], "train", 10).lasso_loss())
    assert lasso > 0
    assert float(g1["loss"]) - float(g0["loss"]) == pytest.approx(1e-3 * lasso, rel=1e-3)
    lgc = [k for k in g0.files if k.endswith("conv_1.conv.weight")]
    assert lgc and all(not np.allclose(g0[k], g1[k], rtol=0, atol=1e-9) for k in lgc)  # lasso gradients
    np.testing.assert_allclose(g0["classifier.weight"], g1["classifier.weight"], rtol=1e-5, atol=1e-7)


# --- a short training run, condensed at the end -------------------------------------------------
@pytest.fixture(scope="module")
def v1_run(tmp_path_factory):
    """~20 s: 960 digits, 30 steps per epoch x 3 epochs, no warm-up, group lasso on, an EMA kept and
    evaluated each epoch; the raw weights (further along than the EMA in so short a run) are condensed."""
    out = tmp_path_factory.mktemp("v1_demo")
    log = _train(out, "data.limit_train=960", "train.epochs=3", "schedule.warmup_epochs=0", "train.lasso=1e-5",
                 "train.ema_decay=0.9", "eval.weights=model")
    return out, log


def _val_images():
    from ppcdnv2.data import build_dataset

    ds = build_dataset(load_config(str(CONFIGS / "demo.yaml"))["data"], train=False, seed=0)
    return paddle.to_tensor(np.stack([ds[i][0] for i in range(len(ds))])), np.asarray(ds.labels)


def test_v1_training_ends_condensed_with_the_training_forms_predictions(v1_run):
    from ppcdnv2.layers import CondenseLinear, LGC
    from ppcdnv2.weights import load_state_dict, read_weights

    out, log = v1_run
    s = json.loads((out / "summary.json").read_text())
    saved = load_config(str(out / "config.yaml"))
    cfg = model_config(saved["model"], 10)
    assert isinstance(cfg, CondenseNetConfig) and saved["train"]["lasso"] == 1e-5
    train_form, condensed = CondenseNet(cfg, "train"), CondenseNet(cfg, "converted")
    load_state_dict(train_form, read_weights(out / "model_train.pdparams"))
    load_state_dict(condensed, read_weights(out / "model_condensed.pdparams"))
    assert all(isinstance(m, LGC) and m.fully_condensed for m in train_form.learned_layers())
    assert isinstance(condensed.classifier, CondenseLinear)
    train_form.eval(), condensed.eval()
    x, labels = _val_images()
    with paddle.no_grad():
        f_train = paddle.flatten(train_form.features(x), 1).numpy()
        f_cond = paddle.flatten(condensed.features(x), 1).numpy()
        logits_train, logits_cond = train_form(x).numpy(), condensed(x).numpy()
    # the condensed trunk computes the training form's features (LGC condensation is exact) ...
    np.testing.assert_allclose(f_cond, f_train, rtol=1e-4, atol=1e-4)
    # ... and its classifier is upstream's: the half of the features with the largest weight L1 norm
    w = read_weights(out / "model_train.pdparams")["classifier.weight"]  # [in, out]
    b = read_weights(out / "model_train.pdparams")["classifier.bias"]
    kept = np.argsort(np.abs(w).sum(1), kind="stable")[w.shape[0] - w.shape[0] // 2:]
    np.testing.assert_array_equal(np.sort(condensed.classifier.index.numpy()), np.sort(kept))
    pruned = f_train[:, kept] @ w[kept] + b
    np.testing.assert_allclose(logits_cond, pruned, rtol=1e-4, atol=1e-4)
    # so its predictions equal the training form's with that classifier: what the trainer compared
    assert np.array_equal(logits_cond.argmax(1), pruned.argmax(1))
    assert s["same_predictions"] is True and "same predictions as the training form with the pruned classifier: True" in log
    assert len(np.unique(logits_cond.argmax(1))) >= 4  # a trained model, not a constant prediction
    assert s["converted_form"]["top1"] == pytest.approx(100 * (logits_cond.argmax(1) == labels).mean())
    assert s["train_form"]["top1"] == pytest.approx(100 * (logits_train.argmax(1) == labels).mean())
    assert s["train_form_pruned_classifier"]["top1"] == s["converted_form"]["top1"]
    assert s["weights"] == "model" and s["converted_form"]["top1"] > 20.0  # chance is 10 %
    from ppcdnv2.flops import count_flops

    assert s["mflops"] == pytest.approx(count_flops(cfg, "converted").flops / 1e6)


def test_v1_checkpoint_evaluates_in_both_forms_with_the_eval_tool(v1_run, capsys):
    from ppcdnv2.engine.evalrun import run_eval

    out, _ = v1_run
    s = json.loads((out / "summary.json").read_text())
    ck = str(out / "checkpoint_last.safetensors")  # its own config (V1, arch) is read from it
    conv = run_eval(ck, form="converted", which="model", progress_bar=False)
    assert conv["form"] == "converted" and conv["top1"] == s["converted_form"]["top1"] and conv["count"] == 359
    train = run_eval(ck, form="train", which="model", progress_bar=False)
    assert train["top1"] == s["train_form"]["top1"]
    ema = run_eval(ck, form="train", which="ema", progress_bar=False)  # the V1 EMA of the last epoch
    last = (out / "log.csv").read_text().splitlines()
    row = dict(zip(last[0].split(","), last[-1].split(",")))
    assert ema["top1"] == pytest.approx(float(row["ema_val_top1"]))
    cfg_args = (str(CONFIGS / "demo.yaml"), V1_DEMO)
    rep = run_eval(str(out / "model_condensed.pdparams"), *cfg_args, progress_bar=False)
    assert rep["source_form"] == "converted" and rep["top1"] == s["converted_form"]["top1"]
    assert rep["mflops"] == pytest.approx(s["mflops"])
    assert "MFLOPs" in capsys.readouterr().out


def test_eval_tool_reads_upstreams_released_v1_weights(tmp_path, capsys):
    """configs/condensenet74_c4_g4.yaml + a random converted CondenseNet-74 saved like upstream's
    ``converted_condensenet_4.pth.tar`` (legacy format, DataParallel keys): logits as the torch reference's."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("ppcdnv2.families.condensenet.reference.condensenet")
    sys.path.insert(0, str(REPO / "tests"))
    from test_condensenet_v1 import _random_reference
    from PIL import Image
    from skimage import data as skdata

    from ppcdnv2.data import build_dataset
    from ppcdnv2.engine.evalrun import run_eval
    from ppcdnv2 import preset

    root = tmp_path / "imagenet"
    # folders named after ImageNet classes (goldfish: 1, tench: 0): eval.py matches them to the model's classes
    for cls, names in {"tench": ["astronaut", "coffee"], "goldfish": ["chelsea", "rocket"]}.items():
        (root / "val" / cls).mkdir(parents=True)
        for n in names:
            Image.fromarray(getattr(skdata, n)()).save(root / "val" / cls / f"{n}.jpg")
    tm, _ = _random_reference(preset("condensenet74_c4_g4"), converted=True, seed=5, batch=1)
    state = {f"module.{k}": v for k, v in tm.state_dict().items() if not k.endswith("num_batches_tracked")}
    pth = tmp_path / "converted_condensenet_4.pth.tar"
    torch.save({"state_dict": state}, pth, _use_new_zipfile_serialization=False)

    over = [f"data.root={root}", "data.num_workers=0"]
    rep = run_eval(str(pth), str(CONFIGS / "condensenet74_c4_g4.yaml"), over, progress_bar=False)
    assert rep["form"] == rep["source_form"] == "converted" and rep["count"] == 4
    assert round(rep["mflops"]) == 529 and round(rep["mparams"], 1) == 4.8  # the published CondenseNet-74 (C=G=4)
    ds = build_dataset(load_config(str(CONFIGS / "condensenet74_c4_g4.yaml"), over)["data"], train=False)
    x = np.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        ref_logits = tm.eval()(torch.from_numpy(x)).numpy()
    from ppcdnv2.deploy.classify import imagenet_classes

    labels = np.asarray([imagenet_classes().index(ds.classes[i]) for i in ds.labels])  # the model's indices
    logp = ref_logits - np.log(np.exp(ref_logits - ref_logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - ref_logits.max(1, keepdims=True)
    assert rep["loss"] == pytest.approx(-logp[np.arange(len(labels)), labels].mean(), rel=1e-4)  # logits as upstream's
    assert rep["top1"] == pytest.approx(100 * (ref_logits.argmax(1) == labels).mean())
    assert "529" in capsys.readouterr().out
