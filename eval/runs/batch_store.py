"""Finished sampling batches kept on disk, so a long run (FID over thousands of samples on a CPU)
survives being killed and continues where it stopped.

A store is a folder holding `identity.json` (everything a batch's samples depend on: the model's
fingerprint, sampler, steps, seed, batch size, simulation) and one safetensors file per finished
batch (`batch-000012.safetensors`: samples, per-step eps errors, UNet seconds and calls; a last
batch with fewer samples than the batch size is `batch-000012-of-8.safetensors`), each written
atomically (core/atomic.py). Because the noise of sample i and the generator of batch k are
functions of the seed alone (eval/runs/sampling.py), a batch computed in a later run is
byte-identical to the one an uninterrupted run would have made; and since the sample count is
not part of the identity, runs over 2,000 and 5,000 samples share their first batches. Each batch
also keeps the sha256 of the noise it started from, and answers only for that noise. A store
made with other options is refused in one line rather than mixed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from ...core.atomic import write_bytes, write_text
from ...core.errors import SdmError

IDENTITY = "identity.json"
NOISE_KEY = "noise_sha256"


class BatchStoreError(SdmError):
    """A batch store that belongs to another run, or cannot be read or written."""


class BatchStore:
    """One model's finished batches of one sampling run."""

    def __init__(self, folder: Path, identity: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.identity = json.loads(json.dumps(identity, sort_keys=True, default=str))
        path = self.folder / IDENTITY
        if path.exists():
            try:
                found = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise BatchStoreError(f"unreadable batch store {self.folder}: {exc}") from None
            if found != self.identity:
                differing = sorted(k for k in set(found) | set(self.identity) if found.get(k) != self.identity.get(k))
                raise BatchStoreError(f"batch store {self.folder} belongs to another run (differs in "
                                      f"{', '.join(differing)}): use another folder or the same options")
        else:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BatchStoreError(f"cannot write batch store {self.folder}: {exc.strerror or exc}") from None
            write_text(path, json.dumps(self.identity, indent=2, sort_keys=True), BatchStoreError)

    def _path(self, index: int, rows: int) -> Path:
        partial = "" if rows == self.identity.get("batch_size") else f"-of-{rows}"
        return self.folder / f"batch-{index:06d}{partial}.safetensors"

    def finished(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("batch-*.safetensors"))

    def load(self, index: int, noise: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """Batch `index` sampled from `noise` if it is finished, else None."""
        path = self._path(index, len(noise))
        if not path.exists():
            return None
        try:
            tensors = load_tensors(path.read_bytes())
        except (OSError, SafetensorError) as exc:
            raise BatchStoreError(f"unreadable batch {path}: {exc}") from None
        if not torch.equal(tensors.get(NOISE_KEY, torch.zeros(0)), noise_digest(noise)):
            raise BatchStoreError(f"batch {path} was not sampled from this run's noise: use another folder")
        return tensors

    def save(self, index: int, noise: torch.Tensor, tensors: dict[str, torch.Tensor]) -> None:
        """Keep batch `index`, sampled from `noise` (its digest is kept with it)."""
        tensors = {**{k: v.contiguous() for k, v in tensors.items()}, NOISE_KEY: noise_digest(noise)}
        write_bytes(self._path(index, len(noise)), save_tensors(tensors), BatchStoreError)


def noise_digest(noise: torch.Tensor) -> torch.Tensor:
    """sha256 of a batch's starting noise (float32 bytes), as 32 uint8: what ties a kept batch to
    its inputs, whichever sample count the run that made it had."""
    data = noise.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return torch.tensor(list(hashlib.sha256(data).digest()), dtype=torch.uint8)
