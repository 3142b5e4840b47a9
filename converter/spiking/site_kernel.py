"""Fused CPU kernels for the spiking sites: one pass over memory instead of one per tensor op.

A site's per-step work (running mean, clamp, expectation increments, neuron update, output
shift) is a chain of cheap elementwise operations; as separate PyTorch ops over [T, B, C, H, W]
tensors they cost more than the site's GroupNorm and SiLU (comparisons, `where` and broadcast
clamps are not vectorised well on CPU). `site_kernel.c` does the same float arithmetic in the
same order in one loop, so outputs are bit-identical (tests/converter/spiking/test_site_kernel.py).
The closed form's twin (clamp, ON/OFF counts, levels) is one such loop too (`twin`).

The C file is compiled on first use with the system C compiler into a per-user cache and loaded
with ctypes (no Python headers, no torch extension build). Where the cache cannot be written, a
one-line notice says so and the library is compiled into a temporary folder for this process
only. Without a compiler, or with SDM_FUSED_SITES=0, the PyTorch path runs instead;
`available()` says which one is in use.
Row ranges run on Python threads (ctypes releases the GIL), as many as torch's thread count.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch

from ...core.atomic import OutputError, atomic_file
from .neurons import GradedIFNode, SiteNeuron

SOURCE = Path(__file__).with_name("site_kernel.c")
FLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC"]
_pointer = ctypes.c_void_p
_int = ctypes.c_int64


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "sdm-convert" / "kernels"


def _compile(target: Path) -> None:
    """Build the shared library at `target` atomically (no half-written file); OutputError when
    `target`'s folder cannot be written, OSError without a compiler."""
    configured = os.environ.get("CC")
    compiler = shutil.which(configured) if configured else shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler")
    with atomic_file(target, executable=True, parents=True) as built:
        subprocess.run([compiler, *FLAGS, "-x", "c", str(SOURCE), "-o", str(built)],
                       check=True, capture_output=True, timeout=120)


def _load(name: str) -> ctypes.CDLL:
    """The compiled library from the cache; where the cache cannot be written, say so in one line
    and build a private copy for this process (the fused path stays on)."""
    target = _cache_dir() / name
    if not target.exists():
        try:
            _compile(target)
        except OutputError as exc:
            print(f"sdm: site-kernel cache not writable ({exc}); compiling it for this run only "
                  "(set XDG_CACHE_HOME to a writable folder to keep it)", file=sys.stderr)
            with tempfile.TemporaryDirectory(prefix="sdm-site-kernel-") as scratch:
                _compile(Path(scratch) / name)
                return ctypes.CDLL(str(Path(scratch) / name))  # stays mapped after the file is removed
    return ctypes.CDLL(str(target))


_enabled = os.environ.get("SDM_FUSED_SITES", "1") != "0"


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    try:
        key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:16]
        library = _load(f"site_kernel-{key}.so")
    except (OSError, subprocess.SubprocessError, OutputError):
        return None
    library.running_mean.argtypes = [_pointer, _pointer, _int, _int, _int, _int]
    library.running_mean.restype = None
    library.fire_sites.argtypes = [_pointer, _int, _int, _int, _int, _pointer, _pointer, ctypes.c_float, ctypes.c_float,
                                   _int, _pointer, _pointer, _int, _int]
    library.fire_sites.restype = _int
    library.fire_exact.argtypes = [_pointer, _int, _int, _int, _int, _pointer, _pointer, ctypes.c_float, ctypes.c_float,
                                   _int, _pointer, _pointer, _int, _int, _int, _int, _int, _int]
    library.fire_exact.restype = _int
    library.twin_sites.argtypes = [_pointer, _pointer, _int, _int, _int, _pointer, _pointer, ctypes.c_float,
                                   ctypes.c_float, _int, _int, _int, _int]
    library.twin_sites.restype = None
    return library


def available() -> bool:
    """Whether the fused kernels are enabled, compiled and loaded (else the PyTorch path runs)."""
    return _enabled and _library() is not None


@contextmanager
def disabled() -> Iterator[None]:
    """Run the PyTorch path inside the block (for side-by-side tests and benchmarks)."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


def applicable(*tensors: torch.Tensor) -> bool:
    """The kernels take contiguous float32 CPU tensors outside autograd and tracing."""
    return (available() and not torch.is_grad_enabled() and not torch.jit.is_tracing()
            and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors))


@lru_cache(maxsize=1)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sdm-site")


def _split(count: int, call) -> list:
    """Run call(begin, end) over [0, count) in torch.get_num_threads() ranges."""
    workers = max(1, min(torch.get_num_threads(), count))
    if workers == 1:
        return [call(0, count)]
    bounds = [count * k // workers for k in range(workers + 1)]
    return list(_pool(workers).map(call, bounds[:-1], bounds[1:]))


def _address(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def running_mean(seq: torch.Tensor) -> torch.Tensor:
    """cumsum(seq, 0) / (1, 2, ..., T) for a contiguous float32 [T, ...] tensor, as a new tensor."""
    out = torch.empty_like(seq)
    steps, n = seq.shape[0], seq[0].numel()
    library = _library()
    _split(n, lambda begin, end: library.running_mean(seq.data_ptr(), out.data_ptr(), steps, n, begin, end))
    return out


def fire(values: torch.Tensor, neuron: SiteNeuron, shift: torch.Tensor, tsm: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """`neuron`'s kind of site from rest on `values` ([T, B, C, ...], contiguous: the site's
    nonlinearity on the running mean), plus the per-channel output shift, written over `values`.

    Single-spike neurons get the increments of t * clamp(values[t]) (times TSM's p[t]), with
    thresholds, clamp bounds and firing levels derived in the kernel with
    SignedIFNode.firing_levels' arithmetic; exact neurons the cumulative drive and
    sdm.core.quantise's counts (GradedIFNode). Returns (values, number of spikes: spike units
    for graded spikes)."""
    steps, batch, channels = values.shape[0], values.shape[1], values.shape[2]
    hw = values[0, 0, 0].numel()
    rows = batch * channels
    library = _library()
    scale = float(neuron.threshold_scale)
    pointers = (neuron.threshold_pos.data_ptr(), neuron.threshold_neg.data_ptr())
    if isinstance(neuron, GradedIFNode):
        payload = neuron.max_payload if neuron.bounded else 0
        constants = (*pointers, scale, neuron.membrane_init, int(neuron.signed), _address(tsm), shift.data_ptr(), payload,
                     neuron.onset, neuron.margin, int(neuron.spread))
        kernel = library.fire_exact
    else:
        constants = (*pointers, scale, 1.0 - neuron.membrane_init, int(neuron.signed), _address(tsm), shift.data_ptr())
        kernel = library.fire_sites

    def run(begin: int, end: int) -> int:
        return kernel(values.data_ptr(), steps, rows, hw, channels, *constants, begin, end)

    counts = _split(rows, run)
    if min(counts) < 0:
        raise MemoryError("site kernel could not allocate its scratch row")
    return values, sum(counts)


def twin(values: torch.Tensor, neuron: SiteNeuron, timesteps: int) -> torch.Tensor:
    """A site's closed form on `values` ([B, C, ...], contiguous: its nonlinearity on the mean
    current), as a new tensor: SpikingActivation.twin's clamp, counts and levels in one pass."""
    batch, channels = values.shape[0], values.shape[1]
    hw = values[0, 0].numel()
    out = torch.empty_like(values)
    library = _library()
    constants = (neuron.threshold_pos.data_ptr(), neuron.threshold_neg.data_ptr(), float(neuron.threshold_scale),
                 neuron.membrane_init, timesteps, int(neuron.signed))
    _split(batch * channels, lambda begin, end: library.twin_sites(values.data_ptr(), out.data_ptr(), batch * channels,
                                                                  hw, channels, *constants, begin, end))
    return out
