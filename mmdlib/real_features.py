"""Real-image features for each finetuning iteration, behind one call: ``source(it)`` returns the
features [batch, D] of iteration ``it``'s global real batch (no gradient).

Which images an iteration uses comes from the run seed's "real-batch" stream (``batch_indices``), so
both sources give the same features: ``PrecomputedReal`` embeds the dataset once (CIFAR-10's 50,000 x
2048 Inception features take 400 MB), ``StreamedReal`` loads and embeds each iteration's images, each
process its share, for datasets whose features would not fit in ``PRECOMPUTE_LIMIT`` bytes.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .cores import worker_count
from .features import FeatureExtractor
from .streams import stream_seed

PRECOMPUTE_LIMIT = 2**30  # bytes of fp32 features held in memory for the whole dataset


def batch_indices(n: int, batch: int, seed: int, it: int) -> list[int]:
    """Indices of iteration ``it``'s global real batch among ``n`` images: without replacement when the
    dataset has ``batch`` images or more, else with replacement; from draw ``it`` of the "real-batch" stream."""
    g = torch.Generator().manual_seed(stream_seed("real-batch", seed, it))
    if batch <= n:
        return torch.randperm(n, generator=g)[:batch].tolist()
    return torch.randint(n, (batch,), generator=g).tolist()


class IterationBatches(Sampler):
    """``batch_indices`` of iterations start..end-1; with ``part=(rank, world)`` only that rank's contiguous
    share of each."""

    def __init__(self, n: int, batch: int, seed: int, start: int, end: int, part: tuple[int, int] = (0, 1)):
        self.n, self.batch, self.seed, self.start, self.end, self.part = n, batch, seed, start, end, part

    def __iter__(self) -> Iterator[list[int]]:
        rank, world = self.part
        share = self.batch // world
        for it in range(self.start, self.end):
            yield batch_indices(self.n, self.batch, self.seed, it)[rank * share:(rank + 1) * share]

    def __len__(self) -> int:
        return self.end - self.start


class PrecomputedReal:
    """The whole dataset embedded once (under ``autocast``, kept in fp32 on ``device``)."""

    def __init__(self, dataset: Dataset, extractor: FeatureExtractor, batch: int, seed: int, device,
                 autocast: Callable = contextlib.nullcontext, workers: int = 0):
        self.n, self.batch, self.seed = len(dataset), batch, seed
        loader = DataLoader(dataset, batch_size=500, num_workers=workers)
        with torch.no_grad(), autocast():
            self.features = torch.cat([extractor(x.to(device)).float() for x, _ in loader])

    def __call__(self, it: int) -> torch.Tensor:
        idx = batch_indices(self.n, self.batch, self.seed, it)
        return self.features[torch.as_tensor(idx, device=self.features.device)]


class StreamedReal:
    """Each iteration's images loaded (this process's share, by a DataLoader that reads ahead from the
    iteration asked for) and embedded; ``gather`` joins the processes' shares in rank order."""

    def __init__(self, dataset: Dataset, extractor: FeatureExtractor, batch: int, seed: int, device,
                 autocast: Callable = contextlib.nullcontext, workers: int = 0, part: tuple[int, int] = (0, 1),
                 gather: Callable[[torch.Tensor], torch.Tensor] | None = None, end: int | None = None):
        self.dataset, self.extractor, self.batch, self.seed, self.device = dataset, extractor, batch, seed, device
        self.autocast, self.workers, self.part, self.gather, self.end = autocast, workers, part, gather, end
        self._next, self._images = None, None

    def _loader(self, it: int) -> Iterator:
        end = max(self.end or 0, it + 1)
        batches = IterationBatches(len(self.dataset), self.batch, self.seed, it, end, self.part)
        return iter(DataLoader(self.dataset, batch_sampler=batches, num_workers=self.workers))

    def __call__(self, it: int) -> torch.Tensor:
        images = next(self._images, None) if it == self._next else None
        if images is None:  # another iteration than the next one, or past ``end``: (re)start the loader at ``it``
            self._images = self._loader(it)
            images = next(self._images)
        images, self._next = images[0], it + 1
        with torch.no_grad(), self.autocast():
            f = self.extractor(images.to(self.device)).float()
        return self.gather(f) if self.gather else f


def real_feature_source(dataset: Dataset, extractor: FeatureExtractor, batch: int, seed: int, device,
                        autocast: Callable = contextlib.nullcontext, workers: int = 0, **streamed_kw):
    """``PrecomputedReal`` when the dataset's features fit in ``PRECOMPUTE_LIMIT`` bytes, else ``StreamedReal``
    (``streamed_kw``: its ``part``, ``gather`` and ``end``). ``workers``: DataLoader workers, at most one per core."""
    workers = worker_count(workers)
    if len(dataset) * extractor.dim * 4 <= PRECOMPUTE_LIMIT:
        return PrecomputedReal(dataset, extractor, batch, seed, device, autocast, workers)
    return StreamedReal(dataset, extractor, batch, seed, device, autocast, workers, **streamed_kw)
