"""GFNet's training run: upstream ``train.py``'s three stages, one after another, with checkpoints and resume.

``tools/train.py -c configs/gfnet_<config>.yaml`` lands here (``engine.trainer.train`` dispatches every
model whose family is not single-output). The step functions are :mod:`.training`'s; this module is the
loop around them, built from the main trainer's pieces (output-folder rules, atomic safetensors
checkpoints with RNG capture, the YAML config, the CSV log, device setup).

A run executes ``gfnet.stages`` (default ``[1, 2, 3]``) in order, each starting from the previous one's final
weights (``model_stage<s>.pdparams``); stage 1 starts from ``gfnet.pretrained`` (or random weights), a run
beginning at stage 2 or 3 from ``gfnet.pretrained`` (a whole-GFNet file, e.g. ``model_stage1.pdparams``).

* Stages 1/3: :func:`.training.stage_loss` (+ ``train.lasso`` x the encoders' group lasso, CondenseNetV2
  only), SGD from :func:`.training.build_optimizer`, learning rates set once per epoch (:func:`.training.set_epoch_lr`).
* Stage 2: :func:`.training.ppo_step` (rollout with ``policy_old``, one PPO update, sync).
* CondenseNetV2 encoders condense progressively over stage 1 (``progress = step / steps of stage 1`` on both
  encoders, their last condensation stage reached at half of it, fully condensed at its end); stages 2/3 run
  at progress 1.
* Randomness: stage-1 patch positions and the policy's exploration noise are drawn from
  ``numpy.random.default_rng([seed, stage, epoch, batch])``; the data order and augmentation from
  ``(seed, 1000 * stage + epoch, index)``; dropout masks from Paddle's generator, whose state the checkpoint
  keeps. So a run resumed inside any stage ends bit-identical to an uninterrupted one on CPU.
* Devices (``python -m paddle.distributed.launch``) and micro-batches (``train.micro_batches``), stages 1/3: rank
  ``r`` of ``n`` takes the ``r``-th slice of every global batch (``TrainBatchSampler``) and the same columns of
  the positions / policy noise one process draws for the whole batch, so the ranks together see what one
  process sees; micro-batches split a device's share the same way (gradients of the mean loss accumulated).
  After the backward every gradient is averaged over the ranks (one flat all-reduce: the forward is
  ``training._run_sequence``, not ``model.forward``, so ``paddle.DataParallel`` would not sync it). BatchNorm
  normalises each device's (micro-)batch, so ``n`` devices compute the gradients of one process running
  ``n`` micro-batches; as in the main trainer, each rank keeps its own running statistics and rank 0's
  state is broadcast to every rank before each validation. Validation: rank ``r`` takes the single-process
  batches ``r, r + n, ...`` (stage-1 positions seeded by the batch's index), the counts summed over the
  ranks; the training meters are summed too. Stage 2 (PPO) runs the same whole-batch step on every rank
  (no speed-up; the policy re-broadcast from rank 0 each epoch). Rank 0 writes every file and runs the end.
* ``train.amp`` (GPU): float16 autocast (O1) over the stage 1/3 forward and loss, a ``GradScaler`` (its state
  in the checkpoint); PPO stays float32. On CPU, as the main trainer: a note, and float32 arithmetic.
* Validation after every epoch: the top-1 of every step on the held-out data ("anytime"). Stage 1: the
  patches at fixed random positions (seeded per validation batch, the same every epoch; the policy is not
  trained yet); stages 2/3: the policy's deterministic actions (the model's own inference).
* Checkpoint ``checkpoint_last.safetensors``: the whole model (encoders with their condensation masks, ``fc``,
  policy, buffers), the stage's optimizer (SGD velocities, or PPO's Adam moments), stage, epoch, step, RNG,
  history. PPO's ``policy_old`` is not stored: it equals ``policy`` at every step boundary (synced after every
  update), so it is rebuilt as a copy on resume.
* At the end: ``model_final.pdparams`` (training form, with the 39 x T thresholds found on
  ``gfnet.find_thresholds_on`` training images and the per-step multiply-adds stored, so ``tools/eval.py``
  uses them), for CondenseNetV2 encoders ``model_condensed.pdparams`` (``ppcdnv2.condense``) checked to give
  the training form's predictions, ``budget.png`` / the budget table on the validation set, ``summary.json``.

Data: ``data.dataset`` imagenet (class folders) or digits (the embedded demo). The images are the
configuration's ``W`` (``data.image_size`` is replaced by it). Training crops as upstream ``train.py``:
RandomResizedCrop(W) (``data.scale``/``data.ratio``) and a horizontal flip (``data.hflip``), with the
configuration's own interpolation (upstream crops 224 bilinear for every configuration, also EfficientNet's
260/300 ones); validation with the configuration's evaluation preprocessing (resize ``W / crop_pct``, centre
crop ``W``). Digits are upsampled to ``W``, or with ``data.digits_size`` drawn at that size at a random place
of a black ``W`` image (the demo: the glance cannot read them, a patch can), and augmented as the main demo
(``data.pad_crop``, ``data.hflip``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import paddle

from ...data import EvalBatchSampler, TrainBatchSampler, build_dataset, build_loader
from ...engine.build import load_initial_weights, model_config
from ...engine.checkpoint import (CheckpointError, capture_rng, load_optimizer_arrays, read_checkpoint,
                                  remove_stale_temporaries, restore_rng, save_checkpoint)
from ...engine.config import config_diff, dump_config
from ...engine.runlog import write_csv
from ...engine.trainer import (CHECKPOINT, TrainError, _broadcast_state, _Console, _is_terminal, check_output_folder,
                               clear_previous_run, finalize_condensation, note_amp_on_cpu, setup_device,
                               steps_per_epoch_of)
from ...weights import StateDictMismatchError, atomic_write, load_state_dict, save_weights, state_dict_numpy
from .config import PRESETS
from .evaluation import collect_step_maxima, evaluate_gfnet, step_mmacs
from .model import GFNet
from .visualize import save_training_curves
from .training import (PPO, GFNetTrainConfig, _run_sequence, build_optimizer, ppo_step, set_epoch_lr, stage_loss,
                       standard_normal, train_config, uniform_positions)

__all__ = ["gfnet_hparams", "train_gfnet", "HPARAM_KEYS", "STAGE_EPOCH_KEY"]

# the gfnet-section keys that override GFNetTrainConfig fields (null: the configuration's upstream value)
HPARAM_KEYS = ("kind", "backbone_lr", "backbone_lr_stage3", "fc_lr_stage1", "fc_lr_stage3", "weight_decay", "momentum", "nesterov",
               "dsn_ratio", "epochs_stage1", "epochs_stage2", "epochs_stage3", "train_model_prime", "dropout",
               "drop_connect", "ppo_lr", "gamma", "ppo_epochs", "clip_eps", "value_coef", "entropy_coef",
               "action_std")
STAGE_EPOCH_KEY = 1000  # data order / augmentation of stage s, epoch e use the epoch key 1000 * s + e
CSV_COLUMNS = ["epoch", "stage", "stage_epoch", "step", "lr", "train_loss", "train_top1", "reward", "val_top1",
               "val_step_top1", "epoch_seconds", "images_per_second"]
_VAL_SEED = 7919  # stage-1 validation positions: default_rng([seed, _VAL_SEED, batch])


def gfnet_hparams(mcfg, gcfg: Mapping[str, Any], batch_size: int) -> GFNetTrainConfig:
    """The run's training hyperparameters: the configuration's upstream ones (``train_config``), or for a
    backbone upstream never trained (CondenseNetV2) the MobileNetV3 setup without its drop rates; then the
    non-null ``gfnet.*`` overrides and ``train.batch_size``."""
    try:
        hp = train_config(mcfg)
    except KeyError:  # GF-CondenseNetV2: MobileNetV3's setup (frozen glance encoder, dsn 5, cascade, conv policy)
        hp = train_config(PRESETS["mobilenetv3_large_100_p96_t3"]).replace(dropout=0.0, drop_connect=0.0)
    changes = {k: gcfg[k] for k in HPARAM_KEYS if gcfg.get(k) is not None}
    try:
        return hp.replace(batch_size=int(batch_size), **changes)
    except (TypeError, ValueError) as e:
        raise TrainError(f"gfnet: {e}") from None


def _check_stages(stages) -> List[int]:
    if (not isinstance(stages, (list, tuple)) or not stages or any(s not in (1, 2, 3) for s in stages)
            or list(stages) != sorted(set(stages))):
        raise TrainError(f"gfnet.stages must be a non-empty increasing list of 1, 2, 3, got {stages!r}")
    return list(stages)


def _encoders(model: GFNet):
    return [e for e in (model.model_prime, model.model) if hasattr(e, "set_progress")]


def _set_progress(model: GFNet, progress: float) -> None:
    for enc in _encoders(model):
        enc.set_progress(min(1.0, progress))


def _lasso(model: GFNet, hp: GFNetTrainConfig):
    trained = [model.model] + ([model.model_prime] if hp.train_model_prime else [])
    terms = [e.lasso_loss() for e in trained if hasattr(e, "lasso_loss")]
    return paddle.add_n(terms) if terms else None


def load_gfnet_pretrained(model: GFNet, path: str) -> str:
    """Stage-1 (or later-stage) start: a whole GFNet file (ours, a checkpoint, a released one) into the model;
    else backbone weights into both encoders (CondenseNetV2 .pth/.pdparams with a fresh classifier when the
    class count differs; torch-layout torchvision / pycls / geffnet files through the GFNet key map)."""
    from ...weights import framework_of, read_state

    state = read_state(path, "model")
    if any(k.startswith("model_prime.") for k in state):
        from ...weights import load_pretrained

        load_pretrained(model, path)
        return "the whole GFNet"
    if _encoders(model):
        fresh = [load_initial_weights(enc, path) for enc in (model.model_prime, model.model)]
        return "both encoders" + (" (new classifiers)" if any(fresh) else "")
    if framework_of(state) == "torch":
        from .backbones import zoo_state_to_upstream

        state = zoo_state_to_upstream(state)
        try:
            model.load_components(model_prime=state, model=state)
        except StateDictMismatchError as e:
            raise TrainError(f"gfnet.pretrained={path}: not {model.cfg.backbone} weights ({e})") from None
    else:
        for enc in (model.model_prime, model.model):
            load_state_dict(enc, state, where=str(path))
    return "both encoders"


def _datasets(cfg, mcfg, seed):
    data = dict(cfg["data"])
    if data["dataset"] not in ("imagenet", "digits"):
        raise TrainError(f"GFNet trains on ImageNet-layout folders or the digits demo (data.dataset), "
                         f"not {data['dataset']!r}")
    data.update(image_size=mcfg.image_size, resize=mcfg.resize_size, interpolation=mcfg.dataset_interpolation,
                train_interpolation=mcfg.dataset_interpolation)
    train_ds = build_dataset(data, train=True, seed=seed)
    val_ds = build_dataset(data, train=False, seed=seed,
                           classes=train_ds.classes if data["dataset"] == "imagenet" else None)
    return data, train_ds, val_ds


class StridedEvalBatches(EvalBatchSampler):
    """The single-process validation batches (``EvalBatchSampler`` of the whole set), device ``rank`` of
    ``world`` taking batches ``rank, rank + world, ...``: every batch keeps its single-process index, so the
    stage-1 positions seeded by it and the summed top-1 equal one process's."""

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1):
        super().__init__(num_samples, batch_size)
        self.rank, self.world_size = rank, world_size

    def __len__(self):
        return len(range(self.rank, super().__len__(), self.world_size))

    def __iter__(self):
        for b, keys in enumerate(super().__iter__()):
            if b % self.world_size == self.rank:
                yield keys


def _all_reduce_sum(values, world: int) -> np.ndarray:
    """``values`` summed over the ranks (float64)."""
    values = np.asarray(values, np.float64)
    if world == 1:
        return values
    import paddle.distributed as dist

    t = paddle.to_tensor(values)
    dist.all_reduce(t)
    return t.numpy()


@paddle.no_grad()
def validate(model: GFNet, loader, hp: GFNetTrainConfig, stage: int, seed: int, rank: int = 0,
             world: int = 1) -> List[float]:
    """Top-1 (percent) of every step on the held-out data, in eval mode. Stage 1: patches at fixed random
    positions (the same every epoch); later stages: the policy's deterministic actions. Across devices the
    loader is a :class:`StridedEvalBatches` and the counts are summed over the ranks."""
    model.eval()
    correct, n = np.zeros(model.cfg.T), 0
    for i, (images, labels, _) in enumerate(loader):
        b = rank + i * world  # the batch's single-process index
        if stage == 1:
            pos = paddle.to_tensor(uniform_positions(np.random.default_rng([seed, _VAL_SEED, b]), model.cfg.T - 1,
                                                     images.shape[0]))
            logits, _, _ = _run_sequence(model, images, labels, hp, lambda step, fmap: pos[step - 1], grad=False)
        else:
            logits = list(model(images))
        y = labels.numpy()
        correct += [float((lg.numpy().argmax(1) == y).sum()) for lg in logits]
        n += len(y)
    total = _all_reduce_sum(list(correct) + [n], world)
    correct, n = total[:-1], total[-1]
    return [float(v) for v in 100.0 * correct / max(n, 1)]


def _draw(stage: int, rng: np.random.Generator, steps: int, batch: int, rank: int, world: int) -> np.ndarray:
    """Stage 1's positions / stage 3's policy noise for the whole global batch [steps, batch, 2], exactly as
    one process draws them, and this rank's columns (the images the sampler gave it)."""
    draw = (uniform_positions if stage == 1 else standard_normal)(rng, steps, batch)
    local = batch // world
    return draw[:, rank * local:(rank + 1) * local] if world > 1 else draw


def _supervised_backward(model: GFNet, images, labels, hp: GFNetTrainConfig, stage: int, draw: np.ndarray,
                         micro: int, lasso: float, amp: bool, scaler):
    """Stage 1/3 gradients of the mean loss over this device's images, accumulated over ``micro`` pieces
    (the images and their columns of ``draw`` split alike); returns (loss sum, last-step correct, images)."""
    n = labels.shape[0]
    sections = [n // micro + (1 if i < n % micro else 0) for i in range(micro)]
    loss_sum, correct, lo = 0.0, 0.0, 0
    for k in sections:
        x, y, d = (images, labels, draw) if k == n else (images[lo:lo + k], labels[lo:lo + k], draw[:, lo:lo + k])
        lo += k
        kw = {"positions": d} if stage == 1 else {"noise": d}
        with paddle.amp.auto_cast(enable=amp, level="O1"):
            loss, res = stage_loss(model, x, y, hp, stage, **kw)
            if lasso > 0 and (term := _lasso(model, hp)) is not None:
                loss = loss + lasso * term
        part = loss if k == n else loss * (k / n)
        (scaler.scale(part) if scaler is not None else part).backward()
        loss_sum += float(loss) * k
        correct += res.correct[-1] * k
    return loss_sum, correct, n


def _all_reduce_grads(model: GFNet, world: int) -> None:
    """Every gradient averaged over the ranks, in one flat all-reduce (GFNet's forward is
    :func:`.training._run_sequence`, not ``model.forward``, so ``paddle.DataParallel`` would not see it)."""
    if world == 1:
        return
    import paddle.distributed as dist

    grads = [p.grad for p in model.parameters() if not p.stop_gradient and p.grad is not None]
    if not grads:
        return
    flat = paddle.concat([g.reshape([-1]).astype("float32") for g in grads])
    dist.all_reduce(flat)
    flat = flat / world
    lo = 0
    for g in grads:
        k = int(np.prod(g.shape))
        paddle.assign(flat[lo:lo + k].reshape(g.shape).astype(g.dtype), output=g)
        lo += k


def _dump_grads(model: GFNet, folder, rank: int, loss: float, stage: int) -> Dict[str, Any]:
    """``debug.dump_grads``: this rank's (all-reduced) gradients of the first step and its loss."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    grads = {k: p.grad.numpy() for k, p in model.named_parameters() if p.grad is not None}
    path = folder / f"grads_rank{rank}.npz"
    np.savez(path, loss=np.float64(loss), stage=np.int64(stage), **grads)
    return {"dumped_grads": str(path)}


def train_gfnet(cfg: Mapping[str, Any], resume: Optional[str] = None, overwrite: bool = False) -> Dict[str, Any]:
    """Run ``gfnet.stages`` as configured (see the module docstring); returns the summary (summary.json)."""
    tc, ec, gc, dbg = cfg["train"], cfg["eval"], cfg["gfnet"], cfg["debug"]
    stages = _check_stages(gc["stages"])
    out = Path(tc["output"])
    check_output_folder(out, resume, overwrite)
    device, world, rank = setup_device(tc)
    if cfg["model"]["pretrained"]:
        raise TrainError("a GFNet starts from gfnet.pretrained (whole-GFNet or backbone weights), not model.pretrained")
    log = _Console(rank == 0)
    amp = bool(tc["amp"])
    if amp and device != "gpu":
        note_amp_on_cpu(log)
    if overwrite and not resume and rank == 0 and (out / CHECKPOINT).exists():
        clear_previous_run(out)
        log(f"--overwrite: removed the previous run's files from {out}")
    seed = int(tc["seed"])
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)

    mcfg = model_config(cfg["model"])
    data, train_ds, val_ds = _datasets(cfg, mcfg, seed)
    mcfg = model_config(cfg["model"], train_ds.num_classes)
    model = GFNet(mcfg)
    if model.cfg.num_classes != train_ds.num_classes:
        raise TrainError(f"model.num_classes={model.cfg.num_classes} but the training data has "
                         f"{train_ds.num_classes} classes")
    hp = gfnet_hparams(mcfg, gc, tc["batch_size"])
    batch, micro = hp.batch_size, int(tc["micro_batches"])
    spe = steps_per_epoch_of(len(train_ds), batch, world, micro)
    lasso = float(tc["lasso"])

    position = {"index": 0, "step": 0}  # stage index into `stages`, step inside that stage
    history: List[Dict[str, Any]] = []
    stage_info: Dict[str, Any] = {}
    meter = np.zeros(4)  # loss (or reward) sum, correct-at-last-step sum, samples, batches
    ckpt = None
    if resume:
        ckpt = read_checkpoint(resume)
        m = ckpt.meta
        if m.get("gfnet") is None:
            raise CheckpointError(f"{resume}: not a GFNet training checkpoint")
        if m["steps_per_epoch"] != spe or m["global_batch"] != batch or m["stages"] != stages:
            raise CheckpointError(f"{resume}: made with stages {m['stages']}, {m['steps_per_epoch']} steps/epoch of "
                                  f"batch {m['global_batch']}; this run has {stages}, {spe} of {batch}")
        diff = {k: v for k, v in config_diff(m["config"], cfg).items() if not k.startswith(("debug.", "train.progress"))}
        if diff:
            log(f"note: config differs from the checkpoint's in {sorted(diff)}")
        load_state_dict(model, ckpt.model, where=f"{resume} (model)")
        position = {"index": int(m["gfnet"]["index"]), "step": int(m["step"])}
        history, stage_info = list(m["history"]), dict(m["gfnet"]["stages"])
        meter = np.asarray(m["meter"], np.float64)  # stages 1/3: summed over the ranks when saved
        if rank != 0 and stages[position["index"]] != 2:
            meter = np.zeros(4)
        log(f"resumed from {resume}: stage {stages[position['index']]}, step {position['step']}")
    elif gc["pretrained"]:
        log(f"started from {gc['pretrained']} ({load_gfnet_pretrained(model, gc['pretrained'])})")
    elif stages[0] != 1:
        log(f"note: stage {stages[0]} starts from random weights (no gfnet.pretrained)")

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out, CHECKPOINT)
        atomic_write(out / "config.yaml", lambda tmp: Path(tmp).write_text(dump_config(cfg)))
    if world > 1:
        _broadcast_state(model)  # every rank starts from rank 0's weights
    # stages 1/3: each rank its slice of every global batch; stage 2 (PPO): every rank the whole batch
    sampler = TrainBatchSampler(len(train_ds), batch, rank, world, seed)
    loader = build_loader(train_ds, sampler, data["num_workers"])
    whole_sampler = TrainBatchSampler(len(train_ds), batch, 0, 1, seed) if world > 1 else sampler
    whole_loader = build_loader(train_ds, whole_sampler, data["num_workers"]) if world > 1 else loader
    val_loader = build_loader(val_ds, StridedEvalBatches(len(val_ds), ec["batch_size"], rank, world),
                              data["num_workers"])
    scaler = paddle.amp.GradScaler(init_loss_scaling=2.0 ** 16) if amp else None
    if scaler is not None and resume and m.get("scaler"):
        scaler.load_state_dict(m["scaler"])
    bar = tc["progress_bar"] and rank == 0 and _is_terminal(sys.stderr)
    log(f"GFNet {mcfg.name}: {len(train_ds)} training images, batch {batch}, {spe} steps/epoch; stages {stages} "
        f"x epochs {[hp.epochs(s) for s in stages]} on {world} {device} device(s); {hp.kind} recipe"
        + (f"; {micro} micro-batches" if micro > 1 else "") + ("; AMP" if amp else ""))
    counters = {"writes": 0, "iters": 0}
    from tqdm import tqdm

    for index in range(position["index"], len(stages)):
        stage = stages[index]
        epochs = hp.epochs(stage)
        total = epochs * spe
        step = position["step"] if index == position["index"] else 0
        if step == 0 and index > 0:
            meter = np.zeros(4)
        if stage == 2:
            ppo, optimizer = PPO(model.policy, hp), None
            opt = ppo.optimizer
        else:
            ppo, optimizer = None, build_optimizer(model, hp, stage, step // spe)
            opt = optimizer
        if ckpt is not None and index == position["index"]:
            load_optimizer_arrays(opt, model, ckpt.opt, where=str(resume))
            if ppo is not None:
                ppo.sync()
            restore_rng(ckpt.meta["rng"])
        ckpt = None
        info = stage_info.setdefault(str(stage), {"epochs": epochs, "seconds": 0.0})

        def checkpoint(kill_midway=False):
            """Every rank calls it (the meter is summed over them); rank 0 writes."""
            saved = meter if stage == 2 else _all_reduce_sum(meter, world)
            if rank != 0:
                return
            meta = {"step": step, "epoch": step // spe, "steps_per_epoch": spe, "global_batch": batch,
                    "stages": stages, "world_size": world, "config": cfg, "rng": capture_rng(), "history": history,
                    "meter": saved.tolist(), "gfnet": {"index": index, "stage": stage, "stages": stage_info},
                    "scaler": {k: (float(v) if isinstance(v, paddle.Tensor) else v)
                               for k, v in scaler.state_dict().items()} if scaler is not None else None}
            save_checkpoint(out / CHECKPOINT, model, opt, meta, None, kill_midway)

        for epoch in range(step // spe, epochs):
            start = step - epoch * spe
            (whole_sampler if stage == 2 else sampler).set_epoch(STAGE_EPOCH_KEY * stage + epoch, start)
            lrs = set_epoch_lr(optimizer, hp, stage, epoch) if optimizer is not None else {"fc": hp.ppo_lr}
            t0, seen = time.time(), 0
            pbar = tqdm(total=spe, initial=start, desc=f"stage {stage} epoch {epoch + 1}/{epochs}", disable=not bar,
                        dynamic_ncols=True, leave=False)
            for b, (images, labels, _) in enumerate(whole_loader if stage == 2 else loader, start=start):
                rng = np.random.default_rng([seed, stage, epoch, b])
                if stage == 1:
                    _set_progress(model, step / total)
                if stage == 2:  # every rank the same whole-batch step (float32: PPO has no AMP path)
                    res = ppo_step(model, images, labels, ppo, rng=rng)
                    meter += [float(res.rewards.mean()) * len(labels), res.correct[-1] * len(labels), len(labels), 1]
                    seen += len(labels)
                else:
                    draw = _draw(stage, rng, model.cfg.T - 1, batch, rank, world)
                    optimizer.clear_grad(set_to_zero=False)
                    dump = dbg["dump_grads"]
                    loss_sum, correct, n = _supervised_backward(model, images, labels, hp, stage, draw, micro, lasso,
                                                                amp, None if dump else scaler)
                    _all_reduce_grads(model, world)
                    if dump:  # debug: each rank's gradients of the first step, then stop
                        return _dump_grads(model, dump, rank, loss_sum / n, stage)
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    meter += [loss_sum, correct, n, 1]
                    seen += n * world
                step += 1
                counters["iters"] += 1
                key = "reward" if stage == 2 else "loss"
                pbar.set_postfix({key: f"{meter[0] / meter[2]:.4f}", "top1": f"{100 * meter[1] / meter[2]:.1f}"})
                pbar.update(1)
                if tc["save_every_iters"] and step % tc["save_every_iters"] == 0 and step % spe:  # on every rank
                    counters["writes"] += 1
                    checkpoint(kill_midway=dbg["kill_in_checkpoint"] == counters["writes"])
                if dbg["exit_after_iters"] and counters["iters"] >= dbg["exit_after_iters"]:
                    sys.stdout.flush()
                    os._exit(3)  # debug: die mid-stage like a killed process
            pbar.close()
            seconds = time.time() - t0
            info["seconds"] = round(info["seconds"] + seconds, 3)
            if stage == 1 and step == total:
                for enc in _encoders(model):
                    finalize_condensation(enc, mcfg.patch_size)
            totals = meter if stage == 2 else _all_reduce_sum(meter, world)
            if world > 1:  # rank 0's BatchNorm statistics (and policy) everywhere, as the main trainer
                _broadcast_state(model)
                if ppo is not None:
                    ppo.sync()
            top1 = validate(model, val_loader, hp, stage, seed, rank, world)
            info["val_step_top1"] = top1
            row = {"epoch": len(history) + 1, "stage": stage, "stage_epoch": epoch + 1, "step": step,
                   "lr": lrs["fc"], "train_top1": 100.0 * totals[1] / totals[2], "val_top1": top1[-1],
                   "val_step_top1": " ".join(f"{v:.2f}" for v in top1), "epoch_seconds": round(seconds, 3),
                   "images_per_second": round(seen / max(seconds, 1e-9), 1)}
            row["reward" if stage == 2 else "train_loss"] = totals[0] / totals[2]
            history.append(row)
            meter = np.zeros(4)
            what = f"reward {row['reward']:.4f}" if stage == 2 else f"loss {row['train_loss']:.4f}"
            log(f"stage {stage} epoch {epoch + 1}/{epochs}: train {what}, last-step top-1 {row['train_top1']:.2f}% | "
                f"val top-1 per step: {' / '.join(f'{v:.2f}' for v in top1)} ({seconds:.1f} s)")
            if rank == 0:
                write_csv(history, out / "log.csv", CSV_COLUMNS)
                save_training_curves(history, out / "curves.png")
            counters["writes"] += 1
            checkpoint(kill_midway=dbg["kill_in_checkpoint"] == counters["writes"])
        if stage == 1:  # also a run resumed after stage 1's last checkpoint
            for enc in _encoders(model):
                finalize_condensation(enc, mcfg.patch_size)
        else:
            _set_progress(model, 1.0)
        if rank == 0:
            save_weights(state_dict_numpy(model), out / f"model_stage{stage}.pdparams")
        log(f"stage {stage} done in {info['seconds']:.1f} s -> {out / f'model_stage{stage}.pdparams'}")
    if rank != 0:
        return {}
    if world > 1:  # the end on rank 0 alone, over the whole held-out set
        val_loader = build_loader(val_ds, EvalBatchSampler(len(val_ds), ec["batch_size"]), data["num_workers"])
    return _finish(cfg, model, hp, data, train_ds, val_ds, val_loader, stage_info, out, log, bar)


def _finish(cfg, model, hp, data, train_ds, val_ds, val_loader, stage_info, out: Path, log, bar) -> Dict[str, Any]:
    """Thresholds found on training images and stored, the budget table/plot on the validation set, the final
    (and condensed) weights, the summary."""
    from ...condense import condense

    gc, seed = cfg["gfnet"], int(cfg["train"]["seed"])
    model.eval()
    val = collect_step_maxima(model, val_loader, "eval", bar, val_ds)
    n_thr = int(gc["find_thresholds_on"] or 0)
    model.set_budget_data(flops=step_mmacs(model))
    summary: Dict[str, Any] = {"model": model.cfg.name, "config": model.cfg.to_dict(),
                               "hparams": dataclasses.asdict(hp), "stages": stage_info}
    if n_thr > 0:
        tds = build_dataset(dict(data, limit_train=min(n_thr, len(train_ds))), train=True, seed=seed,
                            classes=getattr(train_ds, "classes", None) if data["dataset"] == "imagenet" else None)
        train, _, _ = collect_step_maxima(model, build_loader(tds, EvalBatchSampler(len(tds), cfg["eval"]["batch_size"]),
                                                              data["num_workers"]), "thresholds", bar, tds)
        ev = evaluate_gfnet(model, (val[0], val[1]), train, name=f"gfnet_{model.cfg.name}", skipped=val[2])
        model.set_budget_data(thresholds=np.asarray(ev.thresholds, np.float32))
        log(ev.table())
        summary.update(budget=ev.to_dict(), budget_plot=str(ev.plot(out / "budget.png")))
        atomic_write(out / "budget.json", lambda tmp: Path(tmp).write_text(json.dumps(ev.to_dict(), indent=2)))
    from .budget import anytime_accuracy

    summary["val_step_top1"] = anytime_accuracy(val[0], val[1])
    summary["model_final"] = str(save_weights(state_dict_numpy(model), out / "model_final.pdparams"))
    if cfg["export"]["condense"] and _encoders(model):
        import warnings

        with warnings.catch_warnings():  # the family's condense sets the non-encoder state; Paddle warns per key
            warnings.filterwarnings("ignore", message="Skip loading for", category=UserWarning)
            condensed = condense(model)
        condensed.eval()
        cval = collect_step_maxima(condensed, val_loader, "eval (condensed)", bar, val_ds)
        same = bool(np.array_equal(cval[0].classes, val[0].classes))
        summary.update(model_condensed=str(save_weights(state_dict_numpy(condensed), out / "model_condensed.pdparams")),
                       condensed_same_predictions=same,
                       condensed_max_prob_diff=float(np.abs(cval[0].max_probs - val[0].max_probs).max()))
        log(f"condensed: same predictions at every step as the training form: {same} -> {summary['model_condensed']}")
    atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2, default=str)))
    return summary
