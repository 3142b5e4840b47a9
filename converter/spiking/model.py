"""The converted spiking UNet: a diffusers model, called and saved like a `UNet2DModel`.

`SpikingUNet2DModel(x, t).sample` runs T SNN time steps per call and decodes the output as the
time average of the last layer's currents; `set_simulation("closed-form")` runs its quantised twin
instead, one pass per call (converter/spiking/simulation.py); `set_coding("delta")` sends only the
change of each neuron's spikes from one evaluation of a trajectory to the next
(converter/spiking/delta.py). Its folder (`save_pretrained`) holds a JSON config
(source architecture, conversion policy, provenance) and safetensors weights including every
threshold, so `from_pretrained` rebuilds it exactly, and it drops into diffusers pipelines.
"""

from __future__ import annotations

import copy
from contextvars import ContextVar
from typing import Any

import torch
from diffusers import ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput

from ...calibration.thresholds import SiteThresholds
from .delta import DELTA_NEEDS_STEPS, CodingError, DeltaState, TrajectoryTracker, check_coding, in_slot
from .layers import FrozenGroupNorm, SpikingActivation, TimeFolded
from .mapping import convert_unet_modules
from .neurons import SiteNeuron
from .policy import ConversionPolicy
from .simulation import SIMULATIONS, SimulationError, check_choice, closed_form_obstacle
from .tsm import enable_tsm

# The already-converted UNet `from_ann` hands to `__init__`, so a conversion builds the UNet once
# (diffusers' config registration allows only JSON values as constructor arguments).
_PREBUILT: ContextVar[UNet2DModel | None] = ContextVar("prebuilt_spiking_unet", default=None)
# Rows (T x inputs) of 32x32 that one pass on a GPU may hold: the reference model needs about
# 5 MiB of working memory per row (its ANN: 77 MiB at batch 16), so 4,096 rows take ~20 GiB.
GPU_PASS_ROWS = 4096


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

        `tsm`: the model carries learnable per-step TSM factors (converter/spiking/tsm.py); they are
        created here so that their saved values load into them.
        """
        super().__init__()
        self.policy = ConversionPolicy.from_saved(policy)
        prebuilt = _PREBUILT.get()
        if prebuilt is None:  # from_pretrained: the architecture from the config, the weights load next
            prebuilt = convert_unet_modules(UNet2DModel(**{k: v for k, v in source_config.items()
                                                           if not k.startswith("_")}), self.policy)
        self.unet = prebuilt
        self.set_threshold_scale(self.policy.threshold_scale)
        self.register_to_config(
            sample_size=self.unet.config.sample_size,
            in_channels=self.unet.config.in_channels,
            out_channels=self.unet.config.out_channels,
        )
        self.inputs_per_pass: int | None = None
        self.simulation = "steps"
        self.coding = "rate"
        self._trajectories = TrajectoryTracker()
        if tsm:
            enable_tsm(self)

    @classmethod
    def from_ann(cls, ann: UNet2DModel, policy: ConversionPolicy, provenance: dict[str, Any] | None = None) -> "SpikingUNet2DModel":
        """A spiking copy of `ann` with its weights (one deep copy, converted once), on `ann`'s device;
        thresholds still to be set. The sites' new buffers (thresholds, shifts) are created on the
        CPU, so the copy is moved as a whole to where the ANN's weights are."""
        token = _PREBUILT.set(convert_unet_modules(copy.deepcopy(ann), policy))
        try:
            snn = cls(source_config=dict(ann.config), policy=policy.to_dict(), provenance=provenance or {})
        finally:
            _PREBUILT.reset(token)
        return snn.to(next(ann.parameters()).device).eval()

    @property
    def timesteps(self) -> int:
        return self.policy.timesteps

    def sites(self) -> dict[str, SpikingActivation]:
        """Spiking sites by their ANN site name (the GroupNorm path), in execution order."""
        return {m.site: m for m in self.modules() if isinstance(m, SpikingActivation)}

    def neurons(self) -> dict[str, SiteNeuron]:
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
        """Threshold guidance: scale every threshold at sampling time (1.0 leaves them).

        The policy is the one home of the value: it is updated (and so saved and reported) with
        the neurons, never one without the other.
        """
        if not scale > 0:
            raise ValueError(f"threshold scale must be > 0, got {scale}")
        self.policy = self.policy.replace(threshold_scale=float(scale))
        self.register_to_config(policy=self.policy.to_dict())
        for neuron in self.neurons().values():
            neuron.threshold_scale = float(scale)

    def set_monitor(self, enabled: bool) -> None:
        """Count spikes per site while enabled (for firing rates and energy)."""
        for neuron in self.neurons().values():
            neuron.monitor = enabled
            neuron.reset_monitor()

    def set_simulation(self, mode: str) -> None:
        """"steps" (default) simulates T time steps; "closed-form" evaluates the quantised twin in
        one pass (refused with the reason for a model that has none)."""
        check_choice(mode, SIMULATIONS)
        if mode == "closed-form" and self.coding == "delta":
            raise CodingError(DELTA_NEEDS_STEPS)
        if mode == "closed-form":
            obstacle = closed_form_obstacle(self)
            if obstacle:
                raise SimulationError(obstacle)
        self.simulation = mode
        for module in self.modules():
            if isinstance(module, TimeFolded):
                module.closed_form = mode == "closed-form"

    def set_coding(self, coding: str) -> None:
        """"rate" (default): every evaluation sends its spikes; "delta": each neuron sends only the
        change against the previous evaluation of its trajectory (converter/spiking/delta.py). The
        outputs are the same bit for bit; what the spike monitor counts is what was sent."""
        check_coding(coding)
        if coding == "delta":
            if self.simulation != "steps":
                raise CodingError(DELTA_NEEDS_STEPS)
            single = next((name for name, site in self.sites().items() if not site.exact), None)
            if single is not None:
                raise CodingError(f"delta coding needs exact neurons (site {single} has single-spike ones): "
                                  f"re-convert with --neuron exact")
        self.coding = coding
        self.reset_coding_state()
        for neuron in self.neurons().values():
            if hasattr(neuron, "delta"):
                neuron.delta = DeltaState() if coding == "delta" else None

    def reset_coding_state(self) -> None:
        """Forget every trajectory (the next evaluation of each sample is sent in full)."""
        self._trajectories.reset()
        for neuron in self.neurons().values():
            if getattr(neuron, "delta", None) is not None:
                neuron.delta.reset()

    def set_inputs_per_pass(self, inputs: int | None) -> None:
        """How many inputs one stacked pass simulates (each as T rows); None: the device's rule.

        On the CPU the default is ceil(batch / T): a pass holds about as many rows as the batch,
        so the SNN's working memory and its convolutions' shapes match the ANN's at the same batch
        (eval/bench.py measures both). On a GPU, where larger convolutions are what keeps it
        busy, the whole batch runs in one pass up to GPU_PASS_ROWS rows of 32x32 (scaled by the
        image area), then in equal passes below that budget.
        """
        if inputs is not None and inputs < 1:
            raise ValueError(f"inputs per pass must be >= 1, got {inputs}")
        self.inputs_per_pass = inputs

    def _pass_size(self, sample: torch.Tensor) -> int:
        batch = sample.shape[0]
        if torch.jit.is_tracing():  # one pass, so an exported graph keeps its batch dimension dynamic
            return batch
        chosen = self.inputs_per_pass
        if chosen is not None:
            return chosen
        rows_per_input = 1 if self.simulation == "closed-form" else self.timesteps
        if sample.device.type == "cpu":
            return max(1, -(-batch // rows_per_input))
        budget = max(1, GPU_PASS_ROWS * 32 * 32 // (rows_per_input * sample[0, 0].numel()))
        passes = -(-batch // budget)
        return -(-batch // passes)

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
        size = self._pass_size(sample)
        predictions = []
        for start in range(0, batch, size):
            rows = slice(start, start + size)
            if self.coding == "delta":
                self._begin_delta_pass(start, timesteps[rows])
            with in_slot(start):
                predictions.append(self._simulate(sample[rows], timesteps[rows],
                                                  None if class_labels is None else class_labels[rows]))
        prediction = predictions[0] if len(predictions) == 1 else torch.cat(predictions)
        return UNet2DOutput(sample=prediction) if return_dict else (prediction,)

    def _begin_delta_pass(self, slot: int, timesteps: torch.Tensor) -> None:
        """A pass that does not continue its slot's trajectory starts from silence."""
        if not self._trajectories.continues(slot, timesteps):
            for neuron in self.neurons().values():
                neuron.delta.drop(slot)

    def _simulate(self, sample: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        """One stacked pass: T time steps folded into the batch (t-major), from reset state; in
        closed form the twin on the batch itself."""
        steps, batch = self.timesteps, sample.shape[0]  # every site starts its neurons from rest
        if self.simulation == "closed-form":
            return self.unet(sample, timesteps, class_labels=class_labels, return_dict=False)[0]
        out = self.unet(
            sample.repeat(steps, *([1] * (sample.dim() - 1))),
            timesteps.repeat(steps),
            class_labels=None if class_labels is None else class_labels.repeat(steps),
            return_dict=False,
        )[0]
        return out.unflatten(0, (steps, batch)).mean(dim=0)
