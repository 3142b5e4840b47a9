"""Paired sampling: the ANN and the SNN start from the same noises and use the same sampler.

Each model runs its own trajectory (core/diffusion.run_trajectory: a fresh scheduler per batch,
since multistep solvers keep history, and a seeded generator for stochastic samplers), so the
pair differs only by the UNet. Along the SNN's trajectory the ANN is also evaluated on the very
same x_t: the per-step error of the predicted noise then measures the UNet alone, not the drift
of two trajectories.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ...core.devices import CallTimer, tf32_mode
from ...core.diffusion import EpsFunction, run_trajectory, trajectory_length
from .batch_store import BatchStore


@dataclass
class Trajectory:
    """Final samples in [-1, 1] and, when a reference UNet was given, per-sample, per-step eps errors.

    `indices` are the global indices of the samples it holds (all of them unless sharded), so
    partial trajectories of several processes reassemble in order (eval/runs/distributed.py).
    """

    samples: torch.Tensor
    indices: torch.Tensor | None = None
    eps_rel_l2_samples: torch.Tensor | None = None  # [samples, steps]
    eps_cosine_samples: torch.Tensor | None = None
    unet_seconds: float = 0.0
    unet_calls: int = 0

    @property
    def eps_rel_l2(self) -> list[float]:
        """Mean over samples of the relative L2 eps error, per sampler step ([] without reference)."""
        return _per_step_mean(self.eps_rel_l2_samples)

    @property
    def eps_cosine(self) -> list[float]:
        return _per_step_mean(self.eps_cosine_samples)


def _per_step_mean(values: torch.Tensor | None) -> list[float]:
    return [] if values is None else values.double().mean(dim=0).tolist()


@torch.no_grad()
def run_sampler(
    unet: EpsFunction,
    noise: torch.Tensor,
    sampler: str,
    scheduler_config: dict,
    steps: int,
    seed: int,
    batch_size: int,
    device: str | torch.device = "cpu",
    reference: EpsFunction | None = None,
    desc: str = "sampling",
    chunks: Sequence[int] | None = None,
    tf32: bool = False,
    store: BatchStore | None = None,
    reference_samples: int | None = None,
) -> Trajectory:
    """Sample from `noise` with `unet`; with `reference`, measure eps error at every step (of the
    batches that start before sample `reference_samples` only, when given: the eps rows then hold
    the first samples of this shard, in order).

    The noise runs in batches of `batch_size` (`chunks`: only these batch indices, for a shard);
    a stochastic sampler's generator is keyed by the batch's global index, so a sample does not
    depend on which process runs its batch. UNet time is measured with device synchronisation
    (core.devices.CallTimer); TF32 stays off unless `tf32` (core.devices.set_tf32). Errors and
    counters stay on the device until the end: no host sync per step. With `store`, batches
    finished by an earlier run are read back instead of sampled, and each new one is kept as soon
    as it is done (eval/runs/batch_store.py), so a killed run continues where it stopped.
    """
    batches = noise.split(batch_size)
    chunks = list(range(len(batches))) if chunks is None else list(chunks)
    num_steps = trajectory_length(sampler, scheduler_config, steps)
    progress = tqdm(total=len(chunks) * num_steps, desc=desc, unit="step")
    outputs, rel, cos = [], [], []
    timer, calls, stored_seconds = CallTimer(device), [0], [0.0]
    chunk_rel: list[torch.Tensor] = []
    chunk_cos: list[torch.Tensor] = []

    def timed(model_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with timer():
            eps = unet(model_input, t)
        calls[0] += 1
        return eps

    measuring = [False]

    def measured(index: int) -> bool:
        return reference is not None and (reference_samples is None or index * batch_size < reference_samples)

    def observe(step: int, t: torch.Tensor, model_input: torch.Tensor, eps: torch.Tensor) -> None:
        if measuring[0]:
            ref = reference(model_input, t).flatten(1)
            got = eps.flatten(1)
            chunk_rel.append((got - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-12))
            chunk_cos.append(torch.nn.functional.cosine_similarity(got, ref, dim=1))
        progress.update()

    def _run_batch(index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator(device="cpu").manual_seed(seed * 1000003 + index)
        chunk_rel.clear()
        chunk_cos.clear()
        measuring[0] = measured(index)
        x = run_trajectory(timed, batches[index].to(device), sampler, scheduler_config, steps, generator, observe)
        batch = {"samples": x.clamp(-1, 1).cpu()}
        if measuring[0]:
            batch["eps_rel_l2"] = torch.stack(chunk_rel, dim=1).cpu()
            batch["eps_cosine"] = torch.stack(chunk_cos, dim=1).cpu()
        return batch

    with tf32_mode(tf32):
        for index in chunks:
            kept = store.load(index, batches[index]) if store is not None else None
            if kept is None:
                seconds, made = timer.seconds, calls[0]
                kept = _run_batch(index)
                if store is not None:
                    store.save(index, batches[index], {
                        **kept, "seconds": torch.tensor([timer.seconds - seconds], dtype=torch.float64),
                        "calls": torch.tensor([calls[0] - made])})
            else:
                stored_seconds[0] += float(kept["seconds"])
                calls[0] += int(kept["calls"])
                progress.update(num_steps)
            outputs.append(kept["samples"])
            if measured(index):
                rel.append(kept["eps_rel_l2"])
                cos.append(kept["eps_cosine"])
    progress.close()
    indices = torch.arange(len(noise)).split(batch_size)
    return Trajectory(samples=torch.cat(outputs) if outputs else noise[:0].cpu(),
                      indices=torch.cat([indices[k] for k in chunks]) if chunks else torch.zeros(0, dtype=torch.long),
                      eps_rel_l2_samples=_rows(rel, num_steps) if reference is not None else None,
                      eps_cosine_samples=_rows(cos, num_steps) if reference is not None else None,
                      unet_seconds=timer.seconds + stored_seconds[0], unet_calls=calls[0])


def _rows(parts: list[torch.Tensor], columns: int) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, columns)
