"""Batch samplers for one or many devices.

Training: one permutation per epoch from ``(seed, epoch)``, cut into global batches (the last
incomplete one dropped, as upstream); device ``r`` of ``n`` takes the ``r``-th contiguous slice of
each global batch. A single process running the same global batch in ``n`` micro-batches therefore
sees exactly the shards the ``n`` devices see, which is what makes the multi-device gradient test
exact. ``start_batch`` skips batches already done when resuming inside an epoch.

Evaluation: every sample exactly once over all devices (device ``r`` takes ``r, r+n, ...``), no
padding, so summed metrics are exact.
"""
from __future__ import annotations

import numpy as np
from paddle.io import BatchSampler


class TrainBatchSampler(BatchSampler):
    """Yields per-device batches of ``(index, epoch)`` keys; the epoch seeds per-sample augmentation."""

    def __init__(self, num_samples: int, global_batch: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by {world_size} devices")
        if num_samples < global_batch:
            raise ValueError(f"{num_samples} training samples are fewer than one global batch of {global_batch}")
        self.num_samples, self.global_batch = num_samples, global_batch
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.local_batch = global_batch // world_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0):
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self):
        return self.num_samples // self.global_batch - self.start_batch

    def epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def __iter__(self):
        order = self.epoch_order(self.epoch)
        lo = self.rank * self.local_batch
        for b in range(self.start_batch, self.num_samples // self.global_batch):
            chunk = order[b * self.global_batch + lo: b * self.global_batch + lo + self.local_batch]
            yield [(int(i), self.epoch) for i in chunk]


class EvalBatchSampler(BatchSampler):
    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.indices = np.arange(rank, num_samples, world_size)
        self.batch_size = batch_size

    def __len__(self):
        return (len(self.indices) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        for s in range(0, len(self.indices), self.batch_size):
            yield [int(i) for i in self.indices[s:s + self.batch_size]]
