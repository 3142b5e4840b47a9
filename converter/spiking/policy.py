"""How a source UNet is turned into a spiking one: every choice is data, saved with the model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ...core.errors import SdmError

NEGATIVE_LOBES = ("signed", "relu")
NORM_MODES = ("running", "frozen")
ATTENTION_MODES = ("running", "instant")
INPUT_ENCODINGS = ("analog", "spikes")
THRESHOLD_METHODS = ("max", "percentile", "mse")
GRANULARITIES = ("channel", "layer", "auto")
NEURONS = ("exact", "single-spike")
SPIKING_LEVELS = ("hybrid", "residual", "full")
EMISSIONS = ("spread", "eager", "hysteresis", "deferred")
ATTENTION_PROBABILITIES = ("analog", "spiking")
LEGACY_SPIKING = "hybrid"  # what a saved policy without the field meant: it predates the other levels
LEGACY_EMISSION = "eager"  # likewise: neurons emitted every step before schedules existed
LEGACY_PROBABILITIES = "analog"  # and `full` attention's P had no site


class PolicyError(SdmError):
    """A conversion option is out of range or unknown."""


@dataclass(frozen=True)
class ConversionPolicy:
    """Options of one conversion; see README "Conversion policy" for what each one means.

    timesteps: SNN time steps per UNet evaluation (T).
    neuron: "exact" graded-spike ON/OFF neurons whose count after T steps is the quantised twin's
        (converter/spiking/neurons.py); "single-spike" the one-spike-per-step IF neuron of earlier versions.
    max_payload: spikes a side of an exact neuron may emit per step (None: T, which is exact).
    emission: when an exact neuron emits its count (the count at step T, all that the network's
        output depends on, is the twin's under every schedule): "spread" (default) sends the final
        count c as c binary spikes spread evenly over the T steps (at most one unit per side and
        step, exact; a site's window follows its inputs', so the network is layer-pipelined: see
        docs/method.md "Emission schedules"); "eager" follows the target count every step (causal,
        graded unless max_payload bounds it, then inexact); "hysteresis" is silent for `emission_onset` steps, then follows increases at once
        and takes back only when the target has fallen more than `emission_margin` units below what
        was emitted, exact at the last step; "deferred" emits only at the last step, one graded spike of c units (a one-step
        quantised ANN). Single-spike
        neurons have no count to schedule and ignore it.
    negative_lobe: "signed" neurons emit -1/+1 spikes and follow SiLU exactly (its negative lobe
        included); "relu" uses plain IF neurons, i.e. a ReLU proxy for SiLU.
    norm: "running" evaluates GroupNorm on the running mean of the neuron's input current;
        "frozen" uses per-group statistics frozen from calibration (a fixed affine map).
    attention: "running" evaluates softmax attention on the running mean of its input (analog);
        "instant" evaluates it on each time step's input separately.
    membrane_init: initial membrane potential as a fraction of the threshold (0.5 rounds).
    input_encoding: "analog" injects conv_in(x) as a current every step; "spikes" encodes x with
        signed IF neurons so conv_in is spike-driven too.
    threshold_method / percentile / granularity: how thresholds come from calibration statistics
        ("auto" granularity: per channel where that beats the layer's clip, see calibration/thresholds.py).
    bias_correction: add the calibration-measured mean quantisation error back as a constant current.
    layerwise: refit thresholds and bias currents site by site on the SNN's own inputs against
        the ANN's activations (see converter/layerwise.py); `matching_inputs` calibration x_t.
    threshold_scale: threshold guidance (TG), a global factor on all thresholds at sampling time.
    off_threshold_scale: factor on the calibrated negative thresholds of the activation (SiLU)
        sites, whose OFF side carries the small negative lobe: > 1 trades its resolution for fewer
        spikes (stream sites keep theirs: their negative values are as large as the positive ones).
    spiking: how much of the UNet is spike-driven. "hybrid": the ResNet convolutions and conv_out
        (the residual stream, attention and its projections stay analog); "residual": also every
        convolution and projection fed by the residual stream (shortcut, down- and up-sampling
        convolutions, q/k/v), through identity sites; "full": also attention's products
        (Q K^T and softmax V as products of spike trains) and its output projection.
    attention_probabilities: at `full`, "analog" P (softmax V: v spikes select P's entries, plus
        float MACs for P's change times what v emitted before, none under `deferred` emission) or
        "spiking" (a site on P, quantised by its twin: accumulates only, whatever the schedule).
    """

    timesteps: int = 4
    neuron: str = "exact"
    max_payload: int | None = None
    emission: str = "spread"
    emission_margin: int = 1
    emission_onset: int = 1
    negative_lobe: str = "signed"
    norm: str = "running"
    attention: str = "running"
    membrane_init: float = 0.5
    input_encoding: str = "analog"
    threshold_method: str = "mse"
    percentile: float = 99.9
    granularity: str = "channel"
    bias_correction: bool = True
    layerwise: bool = False
    matching_inputs: int = 16
    threshold_scale: float = 1.0
    off_threshold_scale: float = 1.0
    spiking: str = "hybrid"
    attention_probabilities: str = "analog"

    def __post_init__(self) -> None:
        if not isinstance(self.timesteps, int) or self.timesteps < 1:
            raise PolicyError(f"timesteps must be an integer >= 1, got {self.timesteps!r}")
        _check_choice("neuron", self.neuron, NEURONS)
        if self.max_payload is not None and (not isinstance(self.max_payload, int) or self.max_payload < 1):
            raise PolicyError(f"max_payload must be an integer >= 1 or None (T), got {self.max_payload!r}")
        _check_choice("emission", self.emission, EMISSIONS)
        for name in ("emission_margin", "emission_onset"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise PolicyError(f"{name} must be an integer >= 0, got {value!r}")
        _check_choice("negative_lobe", self.negative_lobe, NEGATIVE_LOBES)
        _check_choice("norm", self.norm, NORM_MODES)
        _check_choice("attention", self.attention, ATTENTION_MODES)
        _check_choice("input_encoding", self.input_encoding, INPUT_ENCODINGS)
        _check_choice("threshold_method", self.threshold_method, THRESHOLD_METHODS)
        _check_choice("granularity", self.granularity, GRANULARITIES)
        _check_choice("spiking", self.spiking, SPIKING_LEVELS)
        _check_choice("attention_probabilities", self.attention_probabilities, ATTENTION_PROBABILITIES)
        if not 0.0 < self.percentile <= 100.0:
            raise PolicyError(f"percentile must be in (0, 100], got {self.percentile}")
        if not 0.0 <= self.membrane_init < 1.0:
            raise PolicyError(f"membrane_init must be in [0, 1), got {self.membrane_init}")
        if self.matching_inputs < 1:
            raise PolicyError(f"matching inputs must be >= 1, got {self.matching_inputs}")
        if not self.threshold_scale > 0.0:
            raise PolicyError(f"threshold scale must be > 0, got {self.threshold_scale}")
        if not self.off_threshold_scale > 0.0:
            raise PolicyError(f"off threshold scale must be > 0, got {self.off_threshold_scale}")
        onset, _, spread = self.emission_schedule
        if (self.neuron == "exact" and not spread and self.max_payload is not None
                and (self.timesteps - onset) * self.max_payload < self.timesteps):
            raise PolicyError(f"{self.emission} emission sends in the last {self.timesteps - onset} of {self.timesteps} "
                              f"steps: --max-payload {self.max_payload} can never carry a count of {self.timesteps} "
                              f"(use --emission eager, a smaller --emission-onset, or a larger --max-payload)")
        if self.layerwise and self.off_threshold_scale != 1.0:
            raise PolicyError("off threshold scale applies to calibrated thresholds; layer-wise matching refits them")

    @property
    def pipelined(self) -> bool:
        """Whether every site works once, on its completed input window (exact neurons, `spread`
        emission): what energy accounting charges as one step of analog work."""
        return self.neuron == "exact" and self.emission == "spread"

    @property
    def emission_schedule(self) -> tuple[int, int, bool]:
        """(onset, margin, spread) of the exact neurons (converter/spiking/neurons.GradedIFNode)."""
        if self.emission == "spread":
            return 0, 0, True
        if self.emission == "hysteresis":
            return self.emission_onset, self.emission_margin, False
        if self.emission == "deferred":
            return self.timesteps - 1, 0, False
        return 0, 0, False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ConversionPolicy":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyError(f"unknown conversion options: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> "ConversionPolicy":
        """A policy read back from a saved model: one saved before `spiking` existed was hybrid, one
        saved before `emission` existed emitted eagerly, and one saved before `attention_probabilities`
        existed had analog P."""
        return cls.from_dict({"spiking": LEGACY_SPIKING, "emission": LEGACY_EMISSION,
                              "attention_probabilities": LEGACY_PROBABILITIES, **data})

    def replace(self, **changes: Any) -> "ConversionPolicy":
        return ConversionPolicy.from_dict({**self.to_dict(), **changes})


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise PolicyError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
