"""The training loop: official recipe, progress-driven condensation, EMA, checkpoints, many devices.

Either family trains here (``model.name``/``model.family``, see ``engine.build``): CondenseNetV2 with
its official recipe (configs/cdnv2_*.yaml), CondenseNet V1 with upstream's (configs/condensenet*.yaml).

One iteration: learning rate and condensation progress set from the global step
(``progress = step / total_steps``, so the learned layers pass every stage and the last one is
reached at half of any run of two or more iterations), forward/backward over ``micro_batches``
pieces of the device batch, an optimizer step, an EMA update. Each epoch ends with an evaluation
(raw and EMA weights), a CSV row, the curve plot and an atomic checkpoint. At the end the chosen
weights (EMA by default) are condensed, both forms are evaluated on the held-out data and their
predictions compared (for V1, whose conversion also halves the classifier's inputs, against the
training form with that classifier pruning applied), and the condensed weights are saved.

Everything random is a function of (seed, epoch, sample) or restored from the checkpoint, so a
resumed run ends bit-identical to an uninterrupted one on CPU.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np
import paddle

from ..data import EvalBatchSampler, TrainBatchSampler, build_dataset, build_loader

# Paddle's BatchNorm warns on every training forward that it tracks global statistics (what we want);
# shown twice per run, it breaks the progress line: ignore exactly that message
warnings.filterwarnings("ignore", message="When training, we now always track global mean and variance",
                        category=UserWarning)
from ..registry import family_of
from ..weights import atomic_write, save_weights, state_dict_numpy
from .build import build_model, load_initial_weights
from .checkpoint import (CheckpointError, capture_rng, checkpoint_header, read_checkpoint, remove_stale_temporaries,
                         restore_rng, restore_training_state, save_checkpoint)
from .config import config_diff, dump_config, load_config
from .ema import ModelEMA
from .evaluate import evaluate
from .optim import LRSchedule, build_optimizer, scaled_lrs, smoothed_cross_entropy
from .runlog import VisualDLWriter, plot_history, write_csv

CHECKPOINT = "checkpoint_last.safetensors"


class TrainError(ValueError):
    """A run that cannot start as configured; the message says which setting to change."""


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def _world():
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1")), int(os.environ.get("PADDLE_TRAINER_ID", "0"))


def setup_device(train_cfg: Mapping[str, Any]):
    """Select CPU/GPU, start the process group under ``paddle.distributed.launch``; returns (device, world, rank)."""
    import paddle.distributed as dist

    from ..weights import has_gpu

    gpu = has_gpu()
    want = train_cfg["device"]
    if want == "gpu" and not gpu:
        raise TrainError("train.device is gpu but this Paddle has no usable GPU; use train.device=cpu")
    device = "gpu" if want == "gpu" or (want == "auto" and gpu) else "cpu"
    paddle.set_device(device)
    if train_cfg.get("cpu_threads"):
        paddle.base.core.set_num_threads(int(train_cfg["cpu_threads"]))
    world, rank = _world()
    if world > 1:
        dist.init_parallel_env()
        world, rank = dist.get_world_size(), dist.get_rank()
    return device, world, rank


def steps_per_epoch_of(images: int, global_batch: int, world: int, micro: int) -> int:
    """Whole global batches per epoch; the batch must split evenly over devices and micro-batches."""
    if global_batch % (world * micro):
        raise TrainError(f"train.batch_size={global_batch} must be divisible by devices x micro_batches "
                         f"= {world} x {micro}")
    if images < global_batch:
        raise TrainError(f"{images} training images are fewer than one batch of {global_batch}")
    return images // global_batch


def note_amp_on_cpu(log) -> None:
    """``train.amp`` on CPU: say that the run computes in float32 (through the AMP code path) and silence
    Paddle's per-forward warning about it."""
    # Paddle (3.x) autocasts on GPU/XPU only: on CPU auto_cast is a no-op, so the AMP code path (autocast
    # scope, float16 loss scaling, scaler state in checkpoints) runs with float32 arithmetic
    log("note: train.amp on CPU: Paddle autocasts and scales losses on GPU only, so this run computes in "
        "float32 through the AMP code path (float16 with loss scaling is the GPU path; no bfloat16 on CPU)")
    warnings.filterwarnings("ignore", message="amp_guard can only be enabled on", category=UserWarning)


def finalize_condensation(model, input_size: int):
    """Make sure every learned layer reached its last stage (also for a one-iteration run)."""
    if not family_of(model).progressive or all(layer.fully_condensed for layer in model.learned_layers()):
        return
    was_training = model.training
    model.eval()  # BatchNorm statistics untouched; the forward only runs the masks' catch-up
    model.set_progress(1.0)
    with paddle.no_grad():
        model(paddle.zeros([1, 3, input_size, input_size]))
    model.train(was_training)


class _Console:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, *msg):
        if self.enabled:
            from tqdm import tqdm

            tqdm.write(" ".join(str(m) for m in msg))


def _broadcast_state(layer):
    """Rank 0's BatchNorm statistics (and all other state) to every rank, before an evaluation."""
    import paddle.distributed as dist

    for t in layer.state_dict().values():
        dist.broadcast(t, src=0)


# what a run writes into train.output; an --overwrite run removes them first so nothing of the old run
# (its summary, models, curves) stays beside the new one
RUN_FILES = ("checkpoint_last.safetensors", "checkpoint_epoch*.safetensors", "log.csv", "curves.png", "summary.json",
             "model_train.*", "model_condensed.*", "config.yaml",
             "model_stage*.*", "model_final.*", "budget.png", "budget.json")  # the last four: GFNet runs'


def check_output_folder(out: Path, resume: Optional[str], overwrite: bool) -> None:
    """Refuse to train into a folder that holds a run unless resuming it or told to start over."""
    existing = out / CHECKPOINT
    if resume or not existing.exists():
        return
    if not overwrite:
        meta = checkpoint_header(existing)
        what = f"epoch {meta['epoch']}, step {meta['step']}" if meta else "a checkpoint that is not ours"
        raise TrainError(f"{out} already holds a run ({CHECKPOINT}: {what}); continue it with --resume, train "
                         f"elsewhere with -o train.output=OTHER, or start over with --overwrite")


def clear_previous_run(out: Path) -> None:
    import shutil

    for pattern in RUN_FILES:
        for p in out.glob(pattern):
            p.unlink()
    if (out / "vdl").is_dir():
        shutil.rmtree(out / "vdl")


def train(cfg: Mapping[str, Any], resume: Optional[str] = None, overwrite: bool = False) -> Dict[str, Any]:
    """Run a whole training as configured; returns the final summary (also written to summary.json).

    A ``train.output`` that already holds a run is refused unless ``resume`` continues it or ``overwrite``
    starts over (removing the old run's files)."""
    from .build import resolve_family

    if not resolve_family(cfg["model"]).single_output:  # GFNet: its own three-stage loop
        from ..families.gfnet.engine import train_gfnet

        return train_gfnet(cfg, resume=resume, overwrite=overwrite)
    tc, dc, ec, dbg = cfg["train"], cfg["data"], cfg["eval"], cfg["debug"]
    out = Path(tc["output"])
    check_output_folder(out, resume, overwrite)
    device, world, rank = setup_device(tc)
    log = _Console(rank == 0)
    if overwrite and not resume and rank == 0 and (out / CHECKPOINT).exists():
        clear_previous_run(out)
        log(f"--overwrite: removed the previous run's files from {out}")
    amp = bool(tc["amp"])
    if amp and device != "gpu":
        note_amp_on_cpu(log)

    seed = int(tc["seed"])
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)

    train_ds = build_dataset(dc, train=True, seed=seed)
    val_ds = build_dataset(dc, train=False, seed=seed,
                           classes=train_ds.classes if dc["dataset"] == "imagenet" else None)
    num_classes = train_ds.num_classes
    model = build_model(cfg["model"], "train", num_classes)
    if model.cfg.num_classes != num_classes:
        raise TrainError(f"model.num_classes={model.cfg.num_classes} but the training data has {num_classes} classes")
    input_size = dc["image_size"]

    global_batch, micro = int(tc["batch_size"]), int(tc["micro_batches"])
    steps_per_epoch = steps_per_epoch_of(len(train_ds), global_batch, world, micro)
    epochs = int(tc["epochs"])
    total_steps = epochs * steps_per_epoch
    lr, warmup_lr = scaled_lrs(cfg["optimizer"], cfg["schedule"], global_batch)
    try:
        schedule = LRSchedule(lr, warmup_lr, cfg["schedule"]["warmup_epochs"], epochs, steps_per_epoch,
                              cfg["schedule"]["type"], cfg["schedule"]["min_lr"])
    except ValueError as e:
        raise TrainError(str(e)) from None

    ema = ModelEMA(model, build_model(cfg["model"], "train", num_classes), tc["ema_decay"]) if tc["ema"] else None
    optimizer = build_optimizer(model, cfg["optimizer"], schedule(0))
    scaler = paddle.amp.GradScaler(init_loss_scaling=2.0 ** 16) if amp else None

    step, history, meter = 0, [], np.zeros(3)  # meter: loss sum, correct, samples of this epoch so far
    if resume:
        ckpt = read_checkpoint(resume)
        m = ckpt.meta
        if m["steps_per_epoch"] != steps_per_epoch or m["global_batch"] != global_batch:
            raise CheckpointError(f"{resume}: made with {m['steps_per_epoch']} steps/epoch of batch {m['global_batch']}, "
                                  f"this run has {steps_per_epoch} of {global_batch}; resume with the same data and batch")
        diff = config_diff(m["config"], cfg)
        diff = {k: v for k, v in diff.items() if not k.startswith(("debug.", "train.progress_bar"))}
        if diff:
            log(f"note: config differs from the checkpoint's in {sorted(diff)}")
        restore_training_state(ckpt, model, optimizer, ema.module if ema else None)
        step, history = int(m["step"]), list(m["history"])
        meter = np.asarray(m["meter"], np.float64)
        if scaler is not None and m.get("scaler"):
            scaler.load_state_dict(m["scaler"])
        restore_rng(m["rng"])
        log(f"resumed from {resume} at step {step} (epoch {step // steps_per_epoch}, "
            f"batch {step % steps_per_epoch} of {steps_per_epoch})")
    elif cfg["model"]["pretrained"]:
        fresh = load_initial_weights(model, cfg["model"]["pretrained"])
        log(f"started from {cfg['model']['pretrained']}" + (" (new classifier for "
                                                            f"{num_classes} classes)" if fresh else ""))
        if ema is not None:
            ema.copy_from_model()

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out, CHECKPOINT)
        atomic_write(out / "config.yaml", lambda tmp: Path(tmp).write_text(dump_config(cfg)))
    vdl = VisualDLWriter(out / "vdl", tc["visualdl"]) if rank == 0 else None

    net = paddle.DataParallel(model) if world > 1 else model
    sampler = TrainBatchSampler(len(train_ds), global_batch, rank, world, seed)
    loader = build_loader(train_ds, sampler, dc["num_workers"])
    val_loader = build_loader(val_ds, EvalBatchSampler(len(val_ds), ec["batch_size"], rank, world), dc["num_workers"])
    smoothing, lasso = float(tc["label_smoothing"]), float(tc["lasso"])
    family = family_of(model)
    if not family.single_output:
        raise TrainError(f"{family.title} trains in stages (glance/focus encoders, then the PPO policy) that this "
                         f"trainer does not run yet")
    progressive = family.progressive
    if lasso > 0 and not family.lasso:
        raise TrainError(f"train.lasso = {lasso:g}, but {family.title} has no group lasso; set train.lasso=0")
    # a live tqdm bar on a terminal; elsewhere (a log file, a notebook) its \r updates pile up, so a
    # plain line every log_interval iterations instead
    bar = tc["progress_bar"] and rank == 0 and _is_terminal(sys.stderr)
    lines = tc["progress_bar"] and rank == 0 and not bar
    log(f"training {len(train_ds)} images, {steps_per_epoch} steps/epoch x {epochs} epochs, global batch "
        f"{global_batch} on {world} {device} device(s), peak lr {lr:g}")

    def checkpoint(kill_midway=False):
        meta = {"step": step, "epoch": step // steps_per_epoch, "steps_per_epoch": steps_per_epoch,
                "global_batch": global_batch, "world_size": world, "config": cfg, "rng": capture_rng(),
                "history": history, "meter": meter.tolist(),
                "scaler": {k: (float(v) if isinstance(v, paddle.Tensor) else v)
                           for k, v in scaler.state_dict().items()} if scaler is not None else None}
        save_checkpoint(out / CHECKPOINT, model, optimizer, meta, ema.module if ema else None, kill_midway)
        if tc["keep_checkpoints"] and step % steps_per_epoch == 0:
            save_checkpoint(out / f"checkpoint_epoch{step // steps_per_epoch}.safetensors", model, optimizer, meta,
                            ema.module if ema else None)

    writes = 0
    iters_this_run = 0
    from tqdm import tqdm

    for epoch in range(step // steps_per_epoch, epochs):
        start_batch = step - epoch * steps_per_epoch
        sampler.set_epoch(epoch, start_batch)
        model.train()
        t0, seen = time.time(), 0
        pbar = tqdm(total=steps_per_epoch, initial=start_batch, desc=f"epoch {epoch + 1}/{epochs}", disable=not bar,
                    dynamic_ncols=True, leave=False)
        for images, labels, _ in loader:
            lr_now = schedule(step)
            optimizer.set_lr(lr_now)
            if progressive:
                model.set_progress(step / total_steps)
            if dbg["dump_grads"]:  # debug: each rank's gradients of the first step, then stop
                return _dump_grads(net, model, optimizer, images, labels, micro, world, smoothing, lasso,
                                   dbg["dump_grads"], rank)
            loss_sum, correct, n = _train_step(net, model, optimizer, scaler, images, labels, micro, world,
                                               smoothing, lasso, amp)
            if ema is not None:
                ema.update()
            step += 1
            iters_this_run += 1
            seen += n * world
            meter += [loss_sum, correct, n]
            if (bar or lines) and (step % max(1, tc["log_interval"]) == 0 or step % steps_per_epoch == 0):
                stats = dict(loss=f"{meter[0] / max(meter[2], 1):.4f}", acc=f"{100 * meter[1] / max(meter[2], 1):.2f}",
                             lr=f"{lr_now:.4g}", img_s=f"{seen / max(time.time() - t0, 1e-9):.1f}")
                if bar:
                    pbar.set_postfix(**stats)
                else:
                    log(f"epoch {epoch + 1}/{epochs} step {step - epoch * steps_per_epoch}/{steps_per_epoch}: "
                        + ", ".join(f"{k} {v}" for k, v in stats.items()))
            pbar.update(1)
            if tc["save_every_iters"] and step % tc["save_every_iters"] == 0 and step % steps_per_epoch:
                writes += 1
                if rank == 0:
                    checkpoint(kill_midway=dbg["kill_in_checkpoint"] == writes)
            if dbg["exit_after_iters"] and iters_this_run >= dbg["exit_after_iters"]:
                sys.stdout.flush()
                os._exit(3)  # debug: die mid-epoch like a killed process, no cleanup
        pbar.close()
        seconds = time.time() - t0
        totals = meter.copy()
        if world > 1:
            import paddle.distributed as dist

            t = paddle.to_tensor(totals)
            dist.all_reduce(t)
            totals = t.numpy()
        row = {"epoch": epoch + 1, "step": step, "lr": schedule(step - 1), "train_loss": totals[0] / totals[2],
               "train_top1": 100.0 * totals[1] / totals[2], "epoch_seconds": round(seconds, 3),
               "images_per_second": round(seen / max(seconds, 1e-9), 1)}
        if (epoch + 1) % tc["eval_every"] == 0 or epoch + 1 == epochs:
            if world > 1:
                _broadcast_state(model)
                if ema is not None:
                    _broadcast_state(ema.module)
            res = evaluate(model, val_loader, val_ds, world, desc="eval", progress_bar=bar)
            row.update(res.as_dict("val_"))
            msg = f"epoch {epoch + 1}/{epochs}: train loss {row['train_loss']:.4f} top-1 {row['train_top1']:.2f}% | val {res}"
            if ema is not None:
                eres = evaluate(ema.module, val_loader, val_ds, world, desc="eval (EMA)", progress_bar=bar)
                row.update(eres.as_dict("ema_val_"))
                msg += f" | EMA top-1 {eres.top1:.2f}%"
            log(msg)
        history.append(row)
        meter = np.zeros(3)
        if rank == 0:
            write_csv(history, out / "log.csv")
            plot_history(history, out / "curves.png")
            vdl.log(row)
        writes += 1
        if rank == 0:
            checkpoint(kill_midway=dbg["kill_in_checkpoint"] == writes)
    if vdl is not None:
        vdl.close()
    if rank != 0:
        return {}
    return _finish(cfg, model, ema, val_ds, out, input_size, log, bar)


def _train_step(net, model, optimizer, scaler, images, labels, micro, world, smoothing, lasso, amp):
    """Forward/backward over ``micro`` pieces (gradients averaged), then one optimizer step."""
    loss_sum, correct, n = _backward(net, model, scaler, images, labels, micro, world, smoothing, lasso, amp)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.clear_grad()
    return loss_sum, correct, n


def _backward(net, model, scaler, images, labels, micro, world, smoothing, lasso, amp):
    """Gradients of the mean loss over the device batch, accumulated over ``micro`` pieces."""
    ok = labels >= 0
    if not bool(ok.all()):  # unreadable images skipped with data.skip_bad
        images, labels = images[ok], labels[ok]
    n = labels.shape[0]
    if n == 0:
        return 0.0, 0, 0
    sections = [n // micro + (1 if i < n % micro else 0) for i in range(micro)]
    sections = [k for k in sections if k > 0]
    xs = paddle.split(images, sections) if len(sections) > 1 else [images]
    ys = paddle.split(labels, sections) if len(sections) > 1 else [labels]
    micro = len(xs)
    loss_sum, correct = 0.0, 0
    for i, (x, y) in enumerate(zip(xs, ys)):
        sync = contextlib.nullcontext() if world == 1 or i == micro - 1 else net.no_sync()
        with sync:
            with paddle.amp.auto_cast(enable=amp, level="O1"):
                logits = net(x)
                loss = smoothed_cross_entropy(logits, y, smoothing)
                if lasso > 0:
                    loss = loss + lasso * model.lasso_loss()
            part = loss * (x.shape[0] / n)  # mean over the device batch
            (scaler.scale(part) if scaler is not None else part).backward()
        loss_sum += float(loss) * x.shape[0]
        correct += int((logits.argmax(1) == y.astype("int64")).astype("int64").sum())
    return loss_sum, correct, n


def _dump_grads(net, model, optimizer, images, labels, micro, world, smoothing, lasso, folder, rank):
    """Write this rank's (all-reduced) gradients of one step and its loss to ``folder``; no update."""
    loss_sum, _, n = _backward(net, model, None, images, labels, micro, world, smoothing, lasso, False)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    grads = {n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None}
    path = folder / f"grads_rank{rank}.npz"
    np.savez(path, loss=np.float64(loss_sum / n), **grads)
    optimizer.clear_grad()
    return {"dumped_grads": str(path)}


def _finish(cfg, model, ema, val_ds, out: Path, input_size: int, log, bar) -> Dict[str, Any]:
    """Condense the chosen weights, evaluate both forms on the held-out data, save, summarise."""
    from ..condense import condense, condensed_equivalent
    from ..flops import count_flops

    finalize_condensation(model, input_size)
    if ema is not None:
        ema.copy_condensation_state()
    use_ema = ema is not None and cfg["eval"]["weights"] == "ema"
    final = ema.module if use_ema else model
    which = "ema" if use_ema else "model"
    loader = build_loader(val_ds, EvalBatchSampler(len(val_ds), cfg["eval"]["batch_size"]), cfg["data"]["num_workers"])
    fmt = cfg["export"]["format"]
    ext = "safetensors" if fmt == "safetensors" else "pdparams"
    save_weights(state_dict_numpy(final), out / f"model_train.{ext}", fmt)
    res_train = evaluate(final, loader, val_ds, predictions=True, desc="final (training form)", progress_bar=bar)
    summary: Dict[str, Any] = {"weights": which, "train_form": vars_of(res_train)}
    log(f"final {which} weights, training form: {res_train}")
    if not family_of(final).condensable:
        fl = count_flops(final.cfg, "train")
        summary.update({"mflops": fl.flops / 1e6, "mparams": fl.params / 1e6})
    elif cfg["export"]["condense"]:
        condensed = condense(final)
        condensed.eval()
        res_conv = evaluate(condensed, loader, val_ds, predictions=True, desc="final (condensed)", progress_bar=bar)
        # what the condensed model must reproduce exactly: the training form itself, or for CondenseNet
        # (V1) the training form with the classifier inputs that condensing drops set to zero
        twin = condensed_equivalent(final)
        res_twin = res_train
        if twin is not final:
            res_twin = evaluate(twin, loader, val_ds, predictions=True, desc="final (training form, pruned classifier)",
                                progress_bar=bar)
            summary["train_form_pruned_classifier"] = vars_of(res_twin)
            summary["same_predictions_unpruned"] = bool(np.array_equal(res_train.predictions, res_conv.predictions))
            log(f"training form with the classifier pruned to {final.cfg.classifier_keep:g} of its inputs "
                f"(as condensing does): {res_twin}")
        same = bool(np.array_equal(res_twin.predictions, res_conv.predictions))
        path = save_weights(state_dict_numpy(condensed), out / f"model_condensed.{ext}", fmt)
        fl = count_flops(model.cfg, "converted")
        summary.update({"converted_form": vars_of(res_conv), "same_predictions": same,
                        "condensed_weights": str(path), "mflops": fl.flops / 1e6, "mparams": fl.params / 1e6})
        what = "the training form" if twin is final else "the training form with the pruned classifier"
        log(f"condensed: {res_conv}; same predictions as {what}: {same}; "
            f"{fl.flops / 1e6:.2f} MFLOPs, {fl.params / 1e6:.3f} M params -> {path}")
    atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
    return summary


def vars_of(res) -> Dict[str, Any]:
    return {"top1": res.top1, "top5": res.top5, "loss": res.loss, "count": res.count, "skipped": len(res.skipped)}


def run_from_cli(config: Optional[str], overrides, resume: Optional[str], overwrite: bool = False) -> Dict[str, Any]:
    """``tools/train.py``: config file + overrides, or the checkpoint's own config when only resuming."""
    resume_path = None
    base = None
    if resume:
        if resume == "auto":
            probe = load_config(config, overrides) if config else None
            if probe is None:
                raise TrainError("--resume without a path needs -c CONFIG (to find train.output)")
            resume_path = Path(probe["train"]["output"]) / CHECKPOINT
        else:
            resume_path = Path(resume)
        if not config:
            base = read_checkpoint(resume_path).meta["config"]
    cfg = load_config(config, overrides, base=base)
    return train(cfg, resume=str(resume_path) if resume_path else None, overwrite=overwrite)
