"""Datasets, samplers and augmentation determinism."""
import pickle

import numpy as np
import pytest

from ppcdnv2.data import (CIFAR, DataError, Digits, EvalBatchSampler, TrainBatchSampler, build_dataset,
                          build_loader, digits_split)
from ppcdnv2.data.autoaugment import OPS, RandAugment
from ppcdnv2.data.transforms import ArrayEvalTransform, ArrayTrainTransform, TrainTransform
from ppcdnv2.engine.config import load_config


def _cifar_folder(root, name, n_per_file, rng):
    """Fake CIFAR python batches (same format as the official ones: dicts of bytes keys, [N, 3072] uint8)."""
    folder, train_files, test_files, label_key, n_classes = CIFAR_LAYOUT[name]
    d = root / folder
    d.mkdir(parents=True)
    written = {}
    for f in train_files + test_files:
        data = rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8)
        labels = rng.integers(0, n_classes, n_per_file).tolist()
        with open(d / f, "wb") as fh:
            pickle.dump({b"batch_label": b"x", b"data": data, label_key: labels, b"filenames": [b"a"] * n_per_file}, fh)
        written[f] = (data, labels)
    return written


CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_python_batches(tmp_path, name):
    written = _cifar_folder(tmp_path, name, 3, np.random.default_rng(0))
    _, train_files, test_files, _, n_classes = CIFAR_LAYOUT[name]
    keep = ArrayEvalTransform(mean=(0, 0, 0), std=(1 / 255, 1 / 255, 1 / 255))  # identity on pixel values
    train = CIFAR(tmp_path, name, True, keep)
    test = CIFAR(tmp_path / CIFAR_LAYOUT[name][0], name, False, keep)  # the batch folder itself works too
    assert len(train) == 3 * len(train_files) and len(test) == 3 and train.num_classes == n_classes
    data, labels = written[train_files[-1]]
    img, label, idx = train[len(train) - 1]
    # row layout of the official format: 1024 red values, then green, then blue, each row-major 32x32
    assert img.shape == (3, 32, 32)
    np.testing.assert_allclose(img[0, 0, :], data[-1, :32], atol=1e-3)
    np.testing.assert_allclose(img[1, 31, 31], data[-1, 2047], atol=1e-3)
    np.testing.assert_allclose(img[2, 5, 7], data[-1, 2048 + 5 * 32 + 7], atol=1e-3)
    assert label == labels[-1] and idx == len(train) - 1
    assert test[0][1] == written[test_files[0]][1][0]


def test_cifar_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing"):
        CIFAR(tmp_path, "cifar10", True, ArrayEvalTransform())
    _cifar_folder(tmp_path, "cifar10", 2, np.random.default_rng(0))
    evil = tmp_path / "cifar-10-batches-py" / "test_batch"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("true",))

    evil.write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(DataError, match=r"test_batch: refusing to load .*system"):
        CIFAR(tmp_path, "cifar10", False, ArrayEvalTransform())
    evil.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="test_batch: not a readable CIFAR"):
        CIFAR(tmp_path, "cifar10", False, ArrayEvalTransform())


def test_digits_split_is_stratified_disjoint_and_fixed():
    tr = Digits(True, ArrayEvalTransform(), 0.2)
    va = Digits(False, ArrayEvalTransform(), 0.2)
    assert len(tr) + len(va) == 1797
    assert tr.images.shape[1:] == (32, 32, 3) and tr.images.dtype == np.uint8
    from sklearn.datasets import load_digits

    labels = load_digits().target
    t, v = digits_split(labels, 0.2)
    assert not set(t) & set(v) and len(set(t) | set(v)) == 1797
    counts = np.bincount(labels[v], minlength=10) / np.bincount(labels, minlength=10)
    assert np.all(np.abs(counts - 0.2) < 0.02)
    t2, v2 = digits_split(labels, 0.2)
    assert np.array_equal(v, v2)
    # the upsampled image keeps the digit: its 4x4 block means track the 8x8 original
    small = load_digits().images[v[0]]
    big = va.images[0, :, :, 0].astype(float).reshape(8, 4, 8, 4).mean((1, 3))
    assert np.corrcoef(small.ravel(), big.ravel())[0, 1] > 0.9


def test_digits_canvas_places_the_digit_with_clutter_deterministically():
    """data.digits_size (GFNet demo): the digit pasted where compose() says, clutter off its box, noise; the
    layout a function of (seed, sample) for validation and (seed, epoch, sample) for training."""
    over = ["data.dataset=digits", "data.image_size=96", "data.digits_size=24", "data.digits_clutter=6",
            "data.digits_fragment=12", "data.mean=[0,0,0]", "data.std=[1,1,1]", "data.pad_crop=0", "data.hflip=0"]
    cfg = load_config(None, over)
    va = build_dataset(cfg["data"], train=False, seed=3)
    tr = build_dataset(cfg["data"], train=True, seed=3)
    x, y, i = va[4]
    assert x.shape == (3, 96, 96) and x.dtype == np.float32 and int(i) == 4 and int(y) == va.labels[4]
    img, (top, left) = va.compose(4)
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8 and 0 <= top <= 72 and 0 <= left <= 72
    assert np.allclose(x, img.transpose(2, 0, 1) / 255.0, atol=1e-6)  # the loaded sample is the composition
    box = img[top:top + 24, left:left + 24, 0]
    assert np.array_equal(box, va.images[4, :, :, 0])  # the digit exactly, no clutter over it (noise off)
    rest = img[..., 0].copy()
    rest[top:top + 24, left:left + 24] = 0
    assert (rest > 0).sum() > 50  # clutter around it
    assert np.array_equal(va[4][0], x) and np.array_equal(va.compose(4)[0], img)  # validation: fixed
    layouts = {tr.compose(7, e)[1] for e in range(6)}
    assert len(layouts) > 1 and np.array_equal(tr[(7, 2)][0], tr[(7, 2)][0])  # training: per epoch, repeatable
    other = build_dataset(cfg["data"], train=False, seed=4)
    assert not np.array_equal(other[4][0], x)  # seeded
    noisy = build_dataset(load_config(None, over + ["data.digits_noise=30.0", "data.digits_clutter=0"])["data"],
                          train=False, seed=3)
    nimg, (nt, nl) = noisy.compose(4)
    assert (nt, nl) == (top, left)  # noise after the layout: the same positions
    assert 15 < np.std(nimg[:nt, :, 0].astype(float)) < 45  # background: clipped noise
    # off (default): the plain upsampled digits
    plain = build_dataset(load_config(None, over[:2] + ["data.mean=[0,0,0]", "data.std=[1,1,1]"])["data"],
                          train=False)
    assert plain[0][0].shape == (3, 96, 96) and np.array_equal(plain.images[0], Digits(False, None, size=96).images[0])


def test_train_sampler_shards_equal_the_single_process_batches():
    one = TrainBatchSampler(50, 8, seed=3)
    two = [TrainBatchSampler(50, 8, rank=r, world_size=2, seed=3) for r in range(2)]
    for epoch in (0, 1):
        one.set_epoch(epoch)
        for s in two:
            s.set_epoch(epoch)
        full = list(one)
        assert len(full) == 50 // 8 == len(one)
        for b, (a, c) in zip(full, zip(*two)):
            assert b == a + c  # rank 0 takes the first half of each global batch, rank 1 the second
        flat = [i for batch in full for i, e in batch]
        assert len(set(flat)) == len(flat) == 48 and all(e == epoch for batch in full for _, e in batch)
    one.set_epoch(0)
    e0 = list(one)
    one.set_epoch(1)
    assert list(one) != [[(i, 1) for i, _ in b] for b in e0]  # reshuffled every epoch
    one.set_epoch(1, start_batch=4)
    resumed = list(one)
    assert len(one) == 2
    one.set_epoch(1)
    assert resumed == list(one)[4:] and len(TrainBatchSampler(50, 8, seed=3)) == 6
    with pytest.raises(ValueError, match="divisible"):
        TrainBatchSampler(50, 9, world_size=2)


def test_eval_sampler_covers_every_sample_once():
    parts = [list(EvalBatchSampler(23, 4, r, 3)) for r in range(3)]
    flat = sorted(i for p in parts for b in p for i in b)
    assert flat == list(range(23))


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    cfg = load_config(None, ["data.dataset=digits", "data.image_size=32", "data.pad_crop=3", "data.hflip=0.5",
                             "data.reprob=0.5"])
    ds = build_dataset(cfg["data"], train=True, seed=7)
    a, b, c = ds[(5, 0)][0], ds[(5, 0)][0], ds[(5, 1)][0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    ds2 = build_dataset(cfg["data"], train=True, seed=8)
    assert not np.array_equal(a, ds2[(5, 0)][0])
    # the same batches with and without loader worker processes
    sampler = TrainBatchSampler(64, 16, seed=7)
    got = []
    for workers in (0, 2):
        sampler.set_epoch(2)
        got.append([x.numpy() for x, _, _ in build_loader(ds.subset(64), sampler, workers)])
    assert all(np.array_equal(p, q) for p, q in zip(*got))


def test_train_transform_and_randaugment_run_on_a_photo():
    from PIL import Image
    from skimage import data as skdata

    img = Image.fromarray(skdata.astronaut())
    tf = TrainTransform(224, auto_augment="rand-m9-mstd0.5", reprob=1.0)
    x = tf(img, np.random.default_rng(0))
    assert x.shape == (3, 224, 224) and x.dtype == np.float32 and np.isfinite(x).all()
    assert np.array_equal(x, tf(img, np.random.default_rng(0)))
    ra = RandAugment.from_string("rand-m9-mstd0.5-n3-p1.0")
    assert (ra.num_ops, ra.magnitude, ra.magnitude_std, ra.prob) == (3, 9.0, 0.5, 1.0)
    from ppcdnv2.data.autoaugment import _op

    small = img.resize((64, 64))
    for name in OPS:  # every operation runs and keeps size and mode
        out = _op(name, small, 9.0, np.random.default_rng(1), (124, 116, 104))
        assert out.size == small.size and out.mode == "RGB", name
    for bad in ("auto-m9", "rand-q9", "rand-mX"):
        with pytest.raises(ValueError, match="auto_augment"):
            RandAugment.from_string(bad)


def test_array_train_transform_shift_and_flip():
    arr = np.zeros((8, 8, 3), np.uint8)
    arr[2, 3] = 255
    tf = ArrayTrainTransform(pad=2, hflip=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    positions = set()
    for s in range(40):
        out = tf(arr, np.random.default_rng(s))
        ys, xs = np.nonzero(out[0])
        positions.add((int(ys[0]), int(xs[0])) if len(ys) else None)
    assert (2, 3) in positions and len(positions) > 5
    assert all(p is None or (abs(p[0] - 2) <= 2 and abs(p[1] - 3) <= 2) for p in positions)
    flip = ArrayTrainTransform(pad=0, hflip=1.0, mean=(0, 0, 0), std=(1, 1, 1))(arr, np.random.default_rng(0))
    assert flip[0, 2, 8 - 1 - 3] == 1.0
