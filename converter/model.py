"""The converted spiking UNet: a diffusers model, called and saved like a `UNet2DModel`.

`SpikingUNet2DModel(x, t).sample` runs T SNN time steps per call and decodes the output as the
time average of the last layer's currents. Its folder (`save_pretrained`) holds a JSON config
(source architecture, conversion policy, provenance) and safetensors weights including every
threshold, so `from_pretrained` rebuilds it exactly, and it drops into diffusers pipelines.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from diffusers import ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput

from sdm.calibration.thresholds import SiteThresholds
from sdm.converter.layers import FrozenGroupNorm, SpikingActivation
from sdm.converter.mapping import convert_unet_modules
from sdm.converter.neurons import SignedIFNode
from sdm.converter.policy import ConversionPolicy
from sdm.converter.tsm import enable_tsm


class SpikingUNet2DModel(ModelMixin, ConfigMixin):
    """A spiking UNet converted from a diffusers `UNet2DModel`."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        source_config: dict[str, Any],
        policy: dict[str, Any],
        provenance: dict[str, Any] | None = None,
        sample_size: int | None = None,
        in_channels: int | None = None,
        out_channels: int | None = None,
        tsm: bool = False,
    ) -> None:
        """`sample_size`/`in_channels`/`out_channels` mirror the source config for pipelines.

        `tsm`: the model carries learnable per-step TSM factors (converter/tsm.py); they are
        created here so that their saved values load into them.
        """
        super().__init__()
        source = UNet2DModel(**{k: v for k, v in source_config.items() if not k.startswith("_")})
        self.policy = ConversionPolicy.from_saved(policy)
        self.unet = convert_unet_modules(source, self.policy)
        self.set_threshold_scale(self.policy.threshold_scale)
        self.register_to_config(
            sample_size=source.config.sample_size,
            in_channels=source.config.in_channels,
            out_channels=source.config.out_channels,
        )
        self.inputs_per_pass: int | None = None
        if tsm:
            enable_tsm(self)

    @classmethod
    def from_ann(cls, ann: UNet2DModel, policy: ConversionPolicy, provenance: dict[str, Any] | None = None) -> "SpikingUNet2DModel":
        """A spiking copy of `ann` with its weights; thresholds still to be set."""
        snn = cls(source_config=dict(ann.config), policy=policy.to_dict(), provenance=provenance or {})
        snn.unet = convert_unet_modules(copy.deepcopy(ann), policy)
        snn.set_threshold_scale(policy.threshold_scale)
        return snn.eval()

    @property
    def timesteps(self) -> int:
        return self.policy.timesteps

    def sites(self) -> dict[str, SpikingActivation]:
        """Spiking sites by their ANN site name (the GroupNorm path), in execution order."""
        return {m.site: m for m in self.modules() if isinstance(m, SpikingActivation)}

    def neurons(self) -> dict[str, SignedIFNode]:
        return {name: site.neuron for name, site in self.sites().items()}

    def set_thresholds(self, thresholds: dict[str, SiteThresholds]) -> None:
        """Load per-site thresholds (and bias-correction currents) into the neuron buffers."""
        sites = self.sites()
        if set(thresholds) != set(sites):
            raise ValueError(f"thresholds do not cover the model's sites: {sorted(set(sites) ^ set(thresholds))[:3]}")
        with torch.no_grad():
            for name, values in thresholds.items():
                site = sites[name]
                site.neuron.threshold_pos.copy_(values.pos)
                site.neuron.threshold_neg.copy_(values.neg)
                site.output_shift.copy_(values.shift)

    def set_frozen_norm_stats(self, stats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Per-group (mean, var) for sites whose GroupNorm is frozen from calibration."""
        with torch.no_grad():
            for name, site in self.sites().items():
                if isinstance(site.norm, FrozenGroupNorm):
                    mean, var = stats[name]
                    site.norm.group_mean.copy_(mean)
                    site.norm.group_var.copy_(var)

    def set_threshold_scale(self, scale: float) -> None:
        """Threshold guidance: scale every threshold at sampling time (1.0 leaves them)."""
        if not scale > 0:
            raise ValueError(f"threshold scale must be > 0, got {scale}")
        for neuron in self.neurons().values():
            neuron.threshold_scale = float(scale)

    def set_monitor(self, enabled: bool) -> None:
        """Count spikes per site while enabled (for firing rates and energy)."""
        for neuron in self.neurons().values():
            neuron.monitor = enabled
            neuron.reset_monitor()

    def set_inputs_per_pass(self, inputs: int | None) -> None:
        """How many inputs one stacked pass simulates (each as T rows); None: ceil(batch / T).

        The default gives a pass about as many rows as the batch, so the SNN's working memory and
        its convolutions' shapes match the ANN's at the same batch (eval/bench.py measures both);
        a larger value trades memory for fewer, larger passes (useful on a GPU at small batch).
        """
        if inputs is not None and inputs < 1:
            raise ValueError(f"inputs per pass must be >= 1, got {inputs}")
        self.inputs_per_pass = inputs

    def _pass_size(self, batch: int) -> int:
        if torch.jit.is_tracing():  # one pass, so an exported graph keeps its batch dimension dynamic
            return batch
        chosen = self.inputs_per_pass
        return chosen if chosen is not None else max(1, -(-batch // self.timesteps))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple[torch.Tensor]:
        """Predict like the source UNet: T time steps, output averaged over them.

        The batch runs in passes of `inputs_per_pass` inputs; each pass starts from reset
        neurons, so the result does not depend on how the batch is split.
        """
        batch = sample.shape[0]
        timesteps = torch.as_tensor(timestep, device=sample.device)
        timesteps = timesteps.reshape(-1).expand(batch) if timesteps.numel() == 1 else timesteps
        size = self._pass_size(batch)
        predictions = [
            self._simulate(sample[start:start + size], timesteps[start:start + size],
                           None if class_labels is None else class_labels[start:start + size])
            for start in range(0, batch, size)
        ]
        prediction = predictions[0] if len(predictions) == 1 else torch.cat(predictions)
        return UNet2DOutput(sample=prediction) if return_dict else (prediction,)

    def _simulate(self, sample: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        """One stacked pass: T time steps folded into the batch (t-major), from reset state."""
        steps, batch = self.timesteps, sample.shape[0]  # every site starts its neurons from rest
        out = self.unet(
            sample.repeat(steps, *([1] * (sample.dim() - 1))),
            timesteps.repeat(steps),
            class_labels=None if class_labels is None else class_labels.repeat(steps),
            return_dict=False,
        )[0]
        return out.unflatten(0, (steps, batch)).mean(dim=0)
