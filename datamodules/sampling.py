"""A training sampler that resumes mid-epoch exactly: seeded per-epoch shuffle, one shard per rank.

Lightning 2.6 restores weights, optimizer and loop counters from a checkpoint, but a plain
`DataLoader` starts its epoch again from the first batch (with a new shuffle), so a run resumed
mid-epoch trains on different batches than an uninterrupted one. Here the order of epoch `e` is a
function of `(seed, e)` only, and a resumed epoch skips the samples its rank already trained on.
The position comes from Lightning's own count of processed batches when the checkpoint was
written (see `SafetyMixDataModule.state_dict`), so it is right for every checkpoint: periodic,
end of validation, SLURM requeue signal (saved in the middle of a step) or end of epoch.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sized

from torch.utils.data import DistributedSampler

# Lightning warns on every mid-epoch resume unless the DataLoader itself is `_Stateful`; this
# sampler is what makes the resume exact, so the warning would only mislead.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


class ResumableSampler(DistributedSampler):
    """`DistributedSampler` (seed + epoch shuffle, rank `r` takes every `num_replicas`-th index) that
    can start epoch `resume_epoch` after `samples_done` of this rank's samples.

    With one replica it is a seeded shuffle of the whole dataset. With `n` replicas and per-rank
    batch size `b`, step `k` covers the same samples as step `k` of one replica with batch `n * b`.
    `len()` stays the full shard length: Lightning counts the batches of a resumed epoch itself.
    """

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.resume_epoch: int | None = None
        self.samples_done = 0

    def resume(self, epoch: int, samples_done: int) -> None:
        """Start `epoch` (when it is iterated) after `samples_done` of this rank's samples."""
        self.resume_epoch = epoch
        self.samples_done = samples_done
        # Also the epoch to iterate now: Lightning sets it again before the epoch starts, but a
        # DataLoader with workers may draw indices as soon as its iterator is created.
        self.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self.epoch == self.resume_epoch:
            indices = indices[self.samples_done :]
        return iter(indices)
