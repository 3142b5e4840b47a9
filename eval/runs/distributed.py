"""Sampling sharded over processes with torch.distributed (`torchrun --nproc-per-node N ...`).

Every process builds the same seeded noise for all samples and runs only its share of the
batches (batch k goes to rank k mod N); a stochastic sampler's generator is keyed by the
batch's global index (eval/runs/sampling.py). So each sample's noise and trajectory depend on
(seed, global sample index, batch size) only, never on N, and a single process computes
exactly what it computed before sharding existed. The partial trajectories and spike counters
are gathered on every rank; rank 0 alone computes FID and writes the outputs.

NCCL on CUDA devices, gloo otherwise. Outside torchrun (no WORLD_SIZE > 1 in the environment)
nothing here talks to anybody and every function is the identity.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from ...core.devices import resolve_device
from ...core.errors import SdmError
from .sampling import Trajectory


class RankMismatchError(SdmError):
    """The processes of one torchrun launch were given different options."""


def launched() -> bool:
    """Whether this process is one of several started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(settings: dict[str, Any], device: str) -> torch.device:
    """Resolve this process's device (under torchrun `cuda` means the local rank's GPU), join the
    launch's process group (NCCL for CUDA, gloo otherwise) and check that every rank got the same
    settings. For a single process: only the device."""
    resolved = resolve_device(device)
    if launched() and not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
            dist.init_process_group("nccl", device_id=resolved)
        else:
            dist.init_process_group("gloo")
    check_same_settings(settings)
    return resolved


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_writer() -> bool:
    """Rank 0 writes reports and outputs; the others only sample."""
    return rank() == 0


def my_batches(num_samples: int, batch_size: int) -> list[int]:
    """The global batch indices this rank runs: k, k + N, k + 2N, ... for rank k of N."""
    return list(range(rank(), -(-num_samples // batch_size), world_size()))


def check_same_settings(settings: dict[str, Any]) -> None:
    """Fail on every rank, with one message, unless all ranks were given the same settings."""
    if world_size() == 1:
        return
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    digests: list[str] = [""] * world_size()
    dist.all_gather_object(digests, digest)
    differing = [r for r, d in enumerate(digests) if d != digests[0]]
    if differing:
        raise RankMismatchError(f"torchrun ranks disagree on options: rank(s) {', '.join(map(str, differing))} "
                                f"differ from rank 0 (settings hashes {', '.join(digests)})")


def gather_trajectory(part: Trajectory) -> Trajectory:
    """Every rank's samples, reassembled in global sample order (every rank gets the whole)."""
    if world_size() == 1:
        return part
    parts: list[Trajectory | None] = [None] * world_size()
    dist.all_gather_object(parts, part)

    def joined(name: str) -> torch.Tensor | None:
        values = [getattr(p, name) for p in parts]
        if values[0] is None:
            return None
        # eps rows may cover only each rank's first samples (--eps-error-samples): order those alone
        rows = torch.cat([p.indices[:len(v)] for p, v in zip(parts, values)]).argsort()
        return torch.cat(values)[rows]

    return Trajectory(samples=joined("samples"), indices=joined("indices"),
                      eps_rel_l2_samples=joined("eps_rel_l2_samples"), eps_cosine_samples=joined("eps_cosine_samples"),
                      unet_seconds=sum(p.unet_seconds for p in parts), unet_calls=sum(p.unet_calls for p in parts))


def sum_counts(counts: dict[str, Sequence[float]]) -> dict[str, list[float]]:
    """Element-wise sums over ranks of per-name counters (spikes, neuron steps)."""
    names = list(counts)  # the same order on every rank: the same model's sites
    values = torch.tensor([list(counts[n]) for n in names], dtype=torch.float64)
    if world_size() > 1:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        values = values.to(device)
        dist.all_reduce(values)
    return {name: row for name, row in zip(names, values.cpu().tolist())}
