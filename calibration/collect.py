"""Run the source ANN on calibration inputs and gather the statistics of every site.

Default inputs are data-free: the noisy images x_t that the ANN itself visits along DDIM
trajectories started from Gaussian noise, so every part of the diffusion schedule the sampler
uses is covered. Optionally x_t = q(x_t | x_0) from real images at timesteps spread uniformly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn
from tqdm.auto import tqdm

from ..core.diffusion import (as_eps_function, forward_noising, initial_noise, run_trajectory, sample_shape,
                              to_model_range, trajectory_length)
from ..core.image_data import ImageSource
from .record import CalibrationRecord, SiteStats
from .settings import CalibrationSettings
from .sites import IDENTITY, PROBABILITIES, Site, all_sites, attention_probabilities

DATA_FREE_SAMPLER = "ddim"


class _SiteCollector:
    """Hook on one site: subsamples z per channel and, for a GroupNorm site, averages group stats.

    z is what the site's neurons will encode: a GroupNorm's output (activation sites) or a
    consuming module's input or a projection's output (stream sites, activation "identity").
    """

    def __init__(self, site: Site, values_per_channel: int, generator: torch.Generator) -> None:
        self.site = site
        self.groups = site.module.num_groups if isinstance(site.module, nn.GroupNorm) else None
        self.values_per_channel = values_per_channel
        self.generator = generator
        self.samples: list[torch.Tensor] = []
        self.z_min: torch.Tensor | None = None
        self.z_max: torch.Tensor | None = None
        self.group_mean_sum: torch.Tensor | None = None
        self.group_var_sum: torch.Tensor | None = None
        self.images = 0

    def attach(self) -> torch.utils.hooks.RemovableHandle:
        module = self.site.module
        if self.site.observes == PROBABILITIES:
            return module.register_forward_pre_hook(
                lambda m, inputs: self.observe(inputs[0], attention_probabilities(m, inputs[0])))
        if self.site.observes == "input":
            return module.register_forward_pre_hook(lambda m, inputs: self.observe(inputs[0], inputs[0]))
        return module.register_forward_hook(lambda m, inputs, z: self.observe(inputs[0], z))

    def observe(self, h: torch.Tensor, z: torch.Tensor) -> None:
        z = z.detach().float().movedim(self.site.channel_dim, 1)
        channels = z.shape[1]
        flat = z.transpose(0, 1).reshape(channels, -1)
        picks = torch.randint(flat.shape[1], (self.values_per_channel,), generator=self.generator)
        self.samples.append(flat[:, picks.to(flat.device)].cpu())
        lo, hi = flat.min(dim=1).values.cpu(), flat.max(dim=1).values.cpu()
        self.z_min = lo if self.z_min is None else torch.minimum(self.z_min, lo)
        self.z_max = hi if self.z_max is None else torch.maximum(self.z_max, hi)
        self.images += z.shape[0]
        if self.groups is None:
            return
        h = h.detach().float()
        grouped = h.reshape(h.shape[0], self.groups, -1)
        mean, var = grouped.mean(dim=2).sum(dim=0).cpu(), grouped.var(dim=2, unbiased=False).sum(dim=0).cpu()
        self.group_mean_sum = mean if self.group_mean_sum is None else self.group_mean_sum + mean
        self.group_var_sum = var if self.group_var_sum is None else self.group_var_sum + var

    def finish(self, quantiles: int) -> SiteStats:
        values = torch.cat(self.samples, dim=1)
        levels = torch.linspace(0.0, 1.0, quantiles)
        sketch = torch.quantile(values, levels, dim=1).T.contiguous()
        sketch[:, 0], sketch[:, -1] = self.z_min, self.z_max
        if self.groups is None:  # no GroupNorm to freeze: neutral statistics, as for the input encoder
            mean, var = torch.zeros(1), torch.ones(1)
        else:
            mean, var = self.group_mean_sum / self.images, self.group_var_sum / self.images
        return SiteStats(z_quantiles=sketch, group_mean=mean, group_var=var, activation=self.site.activation)


def _run_with_collectors(unet: UNet2DModel, settings: CalibrationSettings, feed) -> tuple[dict[str, SiteStats], list[int]]:
    """Attach collectors to every site, let `feed(unet)` run the ANN, return the sketches.

    `feed` returns the diffusion timesteps it visited.
    """
    # Stream sites draw from their own generator, so activation sites sample what they always did,
    # and probability sites from theirs, so the other stream sites do too.
    generators = {"activation": torch.Generator().manual_seed(settings.seed + 1),
                  "stream": torch.Generator().manual_seed(settings.seed + 2),
                  PROBABILITIES: torch.Generator().manual_seed(settings.seed + 3)}

    def generator(site: Site) -> torch.Generator:
        if site.observes == PROBABILITIES:
            return generators[PROBABILITIES]
        return generators["stream" if site.activation == IDENTITY else "activation"]

    collectors = {name: _SiteCollector(site, settings.values_per_channel, generator(site))
                  for name, site in all_sites(unet).items()}
    handles = [c.attach() for c in collectors.values()]
    try:
        visited = feed(unet)
    finally:
        for handle in handles:
            handle.remove()
    stats = {name: c.finish(settings.quantiles) for name, c in collectors.items()}
    return stats, visited


def _record(unet: UNet2DModel, settings: CalibrationSettings, feed, source_fingerprint: str, description: str,
            seen_x: list[torch.Tensor], seen_t: list[torch.Tensor]) -> CalibrationRecord:
    """Run `feed` under the collectors and package the statistics with their provenance."""
    sites, visited = _run_with_collectors(unet, settings, feed)
    meta = {"source_fingerprint": source_fingerprint, "inputs": description, "diffusion_timesteps": visited,
            **settings.__dict__}
    return CalibrationRecord(sites=sites, meta=meta, inputs=torch.cat(seen_x), input_timesteps=torch.cat(seen_t))


@torch.no_grad()
def calibrate_data_free(
    unet: UNet2DModel,
    scheduler_config: dict,
    settings: CalibrationSettings,
    source_fingerprint: str,
    device: str | torch.device = "cpu",
) -> CalibrationRecord:
    """Statistics along the ANN's own DDIM (eta 0) trajectories from seeded Gaussian noise."""
    noise = initial_noise(settings.num_samples, sample_shape(unet), settings.seed)
    seen_x, seen_t = [], []

    def feed(model: UNet2DModel) -> list[int]:
        batches = noise.split(settings.batch_size)
        length = trajectory_length(DATA_FREE_SAMPLER, scheduler_config, settings.steps)
        progress = tqdm(total=len(batches) * length, desc="calibrating (ANN DDIM)", unit="eval")
        visited: list[int] = []

        def observe(step: int, t: torch.Tensor, x: torch.Tensor, eps: torch.Tensor) -> None:
            seen_x.append(x.cpu())
            seen_t.append(torch.full((x.shape[0],), int(t)))
            visited.append(int(t))
            progress.update()

        for batch in batches:
            run_trajectory(as_eps_function(model), batch.to(device), DATA_FREE_SAMPLER, scheduler_config,
                           settings.steps, observe=observe)
        progress.close()
        return visited[:length]

    description = "data-free: x_t along the ANN's DDIM (eta 0) trajectories from Gaussian noise"
    return _record(unet, settings, feed, source_fingerprint, description, seen_x, seen_t)


@torch.no_grad()
def calibrate_from_data(
    unet: UNet2DModel,
    scheduler_config: dict,
    images: torch.Tensor,
    settings: CalibrationSettings,
    source_fingerprint: str,
    device: str | torch.device = "cpu",
) -> CalibrationRecord:
    """Statistics on x_t ~ q(x_t | x_0) for real images x_0 in [-1, 1], `settings.steps` timesteps each."""
    schedule = DDPMScheduler.from_config(scheduler_config)
    generator = torch.Generator().manual_seed(settings.seed)
    timesteps = torch.linspace(0, schedule.config.num_train_timesteps - 1, settings.steps).round().long()

    seen_x, seen_t = [], []

    def feed(model: UNet2DModel) -> list[int]:
        batches = images[: settings.num_samples].split(settings.batch_size)
        progress = tqdm(total=len(batches) * len(timesteps), desc="calibrating (ANN on data)", unit="eval")
        for batch in batches:
            for t in timesteps:
                x_t, _ = forward_noising(schedule, batch, t.expand(batch.shape[0]), generator)
                seen_x.append(x_t)
                seen_t.append(t.expand(batch.shape[0]).clone())
                model(x_t.to(device), t.to(device))
                progress.update()
        progress.close()
        return [int(t) for t in timesteps]

    description = "data: x_t ~ q(x_t | x_0) from real images"
    return _record(unet, settings, feed, source_fingerprint, description, seen_x, seen_t)


def calibration_images(path: Path, split: str | None, limit: int, resolution: int) -> torch.Tensor:
    """Real images in [-1, 1], NCHW, at the model's resolution: a seeded subset of `limit`."""
    images = ImageSource(path, split=split, limit=limit, resolution=resolution).load()
    return to_model_range(torch.from_numpy(images).permute(0, 3, 1, 2))


def calibrate(unet: UNet2DModel, scheduler_config: dict, settings: CalibrationSettings, source_fingerprint: str,
              device: str | torch.device = "cpu", images: torch.Tensor | None = None) -> CalibrationRecord:
    """Data-free statistics, or on `images` when given (what `sdm-calibrate` and `sdm-convert` run)."""
    if images is not None:
        return calibrate_from_data(unet, scheduler_config, images, settings, source_fingerprint, device)
    return calibrate_data_free(unet, scheduler_config, settings, source_fingerprint, device)
