"""Fine-tuning a converted SNN (`sdm-finetune`) by distillation from the source ANN and/or real
images. `method` "tsm": learn the TSM factors p[t] (and optionally thresholds or all weights) on
the step simulation; "qat": train the quantised twin in closed form, one pass per step
(converter/finetune/qat.py: LSQ thresholds, bias corrections, optionally weights or merged adapters),
with fresh ANN trajectories every `refresh_every` steps and held-out before/after losses.

Losses (weights `distill_weight`, `data_weight`):
- distillation, no data needed (`distill_target`):
  "eps": on x_t the source ANN visits along its own DDIM trajectories (converter/finetune/pool.py),
  MSE(snn(x_t, t).sample, ann(x_t, t).sample);
  "sample" (qat only): from fresh seeded noises, MSE between the twin's DDIM sample and the
  ANN's, back-propagated through the twin's whole unrolled trajectory. Why: the per-step eps
  errors of the twin are correlated from step to step, so they add up along the trajectory
  (measured: after eps-QAT the sample error is 1.33x the sum of the one-step errors); only the
  trajectory's own loss sees that, and it charges each step what it costs the sample;
- data: the usual diffusion loss on real images, x_t ~ q(x_t | x_0) at uniform random training
  timesteps (the source's scheduler config from the SNN's provenance), MSE against the
  scheduler's prediction target (eps for the reference model);
- spikes (qat only, weight `spike_penalty`, 0: off): the twin's spike rate over every twin pass
  of the step (the unrolled trajectory's passes for the sample target, the data pass too), mean
  ON + OFF units per neuron and SNN step, with straight-through gradients (qat.SpikeCounter).

Training state lives in `OUT/checkpoint.pt` (written every `checkpoint_every` steps, atomically)
through the loop both trainers share (core/training.py); `resume` continues from it with
bit-identical results to an uninterrupted run (on CPU; CUDA kernels may be non-deterministic).
When training ends, OUT is replaced atomically by a converted-model folder (converter/finetune/outputs.py).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from tqdm.auto import tqdm

from ...calibration.record import CalibrationRecord
from ...calibration.settings import CalibrationError
from ...core.devices import resolve_device
from ...core.diffusion import recomputed, run_trajectory, sample_shape, to_model_range, training_example
from ...core.training import (ResumableTrainer, check_output_folder, check_recipe, device_name, load_checkpoint,
                              run_steps, save_checkpoint, write_loss_log)
from ...pretrained.loading import SourceModel, load_source_model, state_dict_fingerprint
from ...pretrained.zoo import DEFAULT_MODEL
from ..folder import check_same_source, load_converted
from ..spiking.model import SpikingUNet2DModel
from ..spiking.tsm import tsm_values
from . import qat
from .outputs import CHECKPOINT, LOSS_COLUMNS, write_outputs
from .pool import (TARGET_CHUNK, Pool, SampleTargets, ann_samples, build_pool, held_out_inputs, held_out_samples,
                   load_images, refresh_pool, step_sensitivity, training_noises)
from .settings import FinetuneError, FinetuneSettings
from .step_sensitivity import StepSensitivity
from .trainable import clamp_thresholds_, freeze, set_trainable

CHECKPOINT_FORMAT = "sdm-finetune-checkpoint/1"


def check_checkpoint(state: dict[str, Any], path: Path, identity: dict[str, Any], recipe: dict[str, Any], steps: int) -> None:
    """Refuse a checkpoint of another model, another T, another conversion or another recipe."""
    if state["source_fingerprint"] != identity["source_fingerprint"]:
        raise FinetuneError(f"checkpoint {path} is from another model (source fingerprint {state['source_fingerprint']}, "
                            f"this SNN's is {identity['source_fingerprint']})")
    if state["timesteps"] != identity["timesteps"]:
        raise FinetuneError(f"checkpoint {path} was trained at T={state['timesteps']}, this SNN has T={identity['timesteps']}")
    if state["snn_fingerprint"] != identity["snn_fingerprint"]:
        raise FinetuneError(f"checkpoint {path} belongs to another conversion of this model (different thresholds or weights)")
    state["recipe"].setdefault("spike_penalty", 0.0)  # a checkpoint from before the option trained without it
    check_recipe(state, path, recipe, steps, FinetuneError)


def per_sample_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The MSE of each item of a batch (eps inputs or final samples alike)."""
    return (output - target).square().flatten(1).mean(dim=1)


def mean_log_mse(error: torch.Tensor) -> torch.Tensor:
    """--sample-loss psnr: the mean of per-sample log MSE (minus the mean PSNR, up to scale and a constant)."""
    return error.clamp_min(1e-12).log().mean()


class Trainer(ResumableTrainer):
    """One fine-tuning run: batches and losses over the shared resumable trainer state."""

    def __init__(self, settings: FinetuneSettings, snn: SpikingUNet2DModel, pool: Pool, images: torch.Tensor | None,
                 schedule: DDPMScheduler, device: torch.device, refresh=None, held_out: Pool | None = None,
                 sensitivity: StepSensitivity | None = None, source: SourceModel | None = None,
                 held_out_sample: SampleTargets | None = None) -> None:
        """`refresh(generation)`: the pool of that generation of fresh trajectories (every
        --refresh-every steps); `held_out`: fixed inputs for `evaluate` instead of pool inputs;
        `sensitivity`: draw distillation inputs in proportion to their step's gain (else uniformly);
        `source` (on `device`) and `held_out_sample`: the sample target's teacher and fixed noises."""
        if settings.method == "qat":
            named = qat.prepare(snn, settings.weights, settings.rank, settings.seed)
            groups = qat.parameter_groups(named, settings.lr, settings.weight_lr)
        else:
            named = set_trainable(snn, settings.train)
            groups = [{"params": [p for _, p in named], "lr": settings.lr}]
        super().__init__(named, torch.optim.Adam(groups), settings.ema, settings.seed, device, FinetuneError)
        self.settings, self.snn, self.pool, self.images, self.schedule = settings, snn, pool, images, schedule
        self.refresh, self.held_out, self.generation = refresh, held_out, 0
        self.sensitivity, self._weights = sensitivity, None
        self.source, self.held_out_sample = source, held_out_sample
        self.params = [p for _, p in named]

    def distill_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.sensitivity is None:
            index = torch.randint(len(self.pool), (self.settings.batch_size,), generator=self.generator)
        else:
            if self._weights is None:  # per pool generation (reset by each refresh)
                self._weights = self.sensitivity.weights_at(self.pool.t)
            index = torch.multinomial(self._weights, self.settings.batch_size, replacement=True, generator=self.generator)
        return self.pool.x[index], self.pool.t[index], self.pool.target[index]

    def data_batch(self, generator: torch.Generator | None = None, index: torch.Tensor | None = None):
        generator = generator or self.generator
        if index is None:
            index = torch.randint(self.images.shape[0], (self.settings.batch_size,), generator=generator)
        return training_example(self.schedule, to_model_range(self.images[index]), generator)

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.settings.bf16):
            out = self.snn(x.to(self.device), t.to(self.device)).sample
        return out.float()

    def unrolled_sample(self, noise: torch.Tensor, differentiable: bool, observe=None) -> torch.Tensor:
        """The twin's DDIM sample from `noise` (clipped to the image range). Differentiable: every
        step's UNet pass is recomputed in the backward pass, so memory holds one pass's
        activations instead of --trajectory-steps of them."""
        eps = recomputed(self.predict) if differentiable else self.predict
        sample = run_trajectory(eps, noise.to(self.device), "ddim", self.source.scheduler_config,
                                self.settings.trajectory_steps, observe=observe, differentiable=differentiable)
        return sample.clamp(-1, 1)

    def sample_distill_loss(self) -> torch.Tensor:
        """The twin's samples against the ANN's from this step's fresh noises: their MSE, or
        (--sample-loss psnr) the mean of each sample's log MSE, -PSNR up to a constant: a sample
        whose trajectory left the ANN's for another image then weighs what any other does,
        instead of dominating the gradient with an error no small change can remove."""
        noise = training_noises(self.settings, sample_shape(self.source.unet), self.step)
        target = ann_samples(self.source, noise, self.settings.trajectory_steps, self.device)
        error = per_sample_mse(self.unrolled_sample(noise, differentiable=True), target)
        return mean_log_mse(error) if self.settings.sample_loss == "psnr" else error.mean()

    def train_step(self) -> list[float]:
        s = self.settings
        if self.refresh is not None and self.step // s.refresh_every != self.generation:
            self.generation = self.step // s.refresh_every
            self.pool, self._weights = self.refresh(self.generation), None
        self.optimizer.zero_grad(set_to_none=True)
        distill = data = torch.zeros((), device=self.device)
        counter = qat.SpikeCounter(self.snn) if s.spike_penalty > 0 else None
        with counter or nullcontext():
            if s.distill_weight > 0 and s.distill_target == "sample":
                distill = self.sample_distill_loss()
            elif s.distill_weight > 0:
                x, t, target = self.distill_batch()
                distill = F.mse_loss(self.predict(x, t), target.to(self.device))
            if s.data_weight > 0:
                x, t, target = self.data_batch()
                data = F.mse_loss(self.predict(x, t), target.to(self.device))
            loss = s.distill_weight * distill + s.data_weight * data
            if counter is not None:
                loss = loss + s.spike_penalty * counter.rate().to(self.device)
                counter.recording = False  # backward reruns checkpointed passes, hooks included: count them once
            grad_norm = self.optimise(loss, s.grad_clip)
        if s.method == "qat" or s.train != "p":
            clamp_thresholds_(self.snn)
        return self.finish_step(v.detach() for v in (loss, distill, data, grad_norm))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Losses on fixed inputs (fp32, no autocast): the held-out inputs, else eval-size pool inputs spread evenly.
        QAT: also the twin's spike rate on the distillation inputs (the data inputs if there are none)."""
        s, result = self.settings, {}
        counter = qat.SpikeCounter(self.snn) if s.method == "qat" else None
        if s.distill_weight > 0:
            if self.held_out is not None:
                inputs = self.held_out
            else:
                count = min(s.eval_size, len(self.pool))
                index = torch.linspace(0, len(self.pool) - 1, count).round().long().unique()
                inputs = Pool(self.pool.x[index], self.pool.t[index], self.pool.target[index])
            per_input = self._mse(inputs.x, inputs.t, inputs.target, counter)
            result["distill"] = float(per_input.mean())
            if self.sensitivity is not None:  # the loss the batches estimate: a proxy of final-sample MSE
                weights = self.sensitivity.weights_at(inputs.t)
                result["distill_weighted"] = float((per_input.double() * weights).sum() / weights.sum())
            if self.held_out_sample is not None:  # the sample target's own loss
                chunks = self.held_out_sample.noise.split(TARGET_CHUNK)
                progress = tqdm(total=len(chunks) * s.trajectory_steps, desc="held-out samples", unit="eval")
                samples = torch.cat([self.unrolled_sample(chunk, False, lambda *_: progress.update()).float().cpu()
                                     for chunk in chunks])
                progress.close()
                error = per_sample_mse(samples, self.held_out_sample.sample).double()
                result["distill_sample"] = float(error.mean())
                result["distill_sample_log"] = float(mean_log_mse(error))
                result["sample_psnr_db"] = float((10 * torch.log10(4 / error.clamp_min(1e-12))).mean())
        if s.data_weight > 0:
            generator = torch.Generator().manual_seed(s.seed + 1)
            x, t, target = self.data_batch(generator, torch.arange(min(s.eval_size, self.images.shape[0])))
            result["data"] = float(self._mse(x, t, target, counter if s.distill_weight == 0 else None).mean())
        # what the batches estimate
        sample_key = "distill_sample_log" if s.sample_loss == "psnr" else "distill_sample"
        distill = result.get(sample_key, result.get("distill_weighted", result.get("distill", 0.0)))
        result["loss"] = s.distill_weight * distill + s.data_weight * result.get("data", 0.0)
        if counter is not None:
            result["spike_rate"] = float(counter.rate())
            if s.spike_penalty > 0:
                result["loss"] += s.spike_penalty * result["spike_rate"]
        return result

    def _mse(self, x: torch.Tensor, t: torch.Tensor, target: torch.Tensor,
             counter: qat.SpikeCounter | None = None) -> torch.Tensor:
        """Per-input MSE (CPU); `counter` counts the twin's spikes meanwhile."""
        with counter or nullcontext():
            outs = [self.snn(xc.to(self.device), tc.to(self.device)).sample.float().cpu()
                    for xc, tc in zip(x.split(TARGET_CHUNK), t.split(TARGET_CHUNK))]
        return per_sample_mse(torch.cat(outs), target)

    def state(self, identity: dict[str, Any], recipe: dict[str, Any], loss_before: dict[str, float]) -> dict[str, Any]:
        sensitivity = self.sensitivity.to_json() if self.sensitivity is not None else None
        return {"format": CHECKPOINT_FORMAT, **identity, "recipe": recipe, "step_sensitivity": sensitivity,
                "trainable": {name: p.detach().cpu().clone() for name, p in self.named},
                "loss_before": dict(loss_before), **self.common_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        names = [name for name, _ in self.named]
        if sorted(state["trainable"]) != sorted(names):
            raise FinetuneError("checkpoint's trainable values do not match this model's")
        with torch.no_grad():
            for name, p in self.named:
                value = state["trainable"][name]
                if value.shape != p.shape:
                    raise FinetuneError(f"checkpoint's {name} has shape {tuple(value.shape)}, the model's {tuple(p.shape)}")
                p.copy_(value)
        self.load_common_state(state)

    def use_ema(self) -> None:
        with torch.no_grad():
            for name, p in self.named:
                if name in self.ema:
                    p.copy_(self.ema[name])


def resolve_ann(settings: FinetuneSettings, snn: SpikingUNet2DModel) -> SourceModel:
    """The ANN given, else the SNN's recorded source if it exists here, else the default model; it must be the source."""
    if settings.ann is not None:
        name = settings.ann
    else:
        origin = (snn.config.provenance or {}).get("source", {}).get("origin")
        name = origin if origin and Path(origin).exists() else DEFAULT_MODEL
    source = load_source_model(name)
    check_same_source(snn, source, str(settings.snn))
    return source


def finetune(settings: FinetuneSettings) -> dict[str, Any]:
    """The whole run: inputs, resume, the shared training loop, outputs."""
    device = resolve_device(settings.device)
    snn = load_converted(settings.snn, device=str(device))
    if settings.method == "qat":
        qat.check_trainable(snn)
    check_output_folder(settings.out, CHECKPOINT, settings.resume, settings.overwrite, "fine-tuning", FinetuneError)
    try:
        record: CalibrationRecord | None = CalibrationRecord.load(settings.snn)
    except CalibrationError:
        record = None
    if settings.distill_weight > 0 and settings.pool in ("record", "both") and (record is None or record.inputs is None):
        raise FinetuneError(f"{settings.snn} has no calibration inputs stored in its record; use --pool trajectories")
    provenance = dict(snn.config.provenance or {})
    identity = {
        "source_fingerprint": provenance.get("source", {}).get("fingerprint"),
        "snn_fingerprint": state_dict_fingerprint(snn.state_dict()),
        "timesteps": snn.timesteps,
    }
    recipe = settings.recipe()
    checkpoint_path = settings.out / CHECKPOINT
    resumed = None
    if settings.resume:
        resumed = load_checkpoint(checkpoint_path, CHECKPOINT_FORMAT, "sdm-finetune", FinetuneError)
        check_checkpoint(resumed, checkpoint_path, identity, recipe, settings.steps)
    if "scheduler_config" not in provenance:
        raise FinetuneError(f"{settings.snn} records no scheduler config in its provenance; re-run sdm-convert with this version")
    schedule = DDPMScheduler.from_config(provenance["scheduler_config"])
    images = load_images(settings, snn) if settings.data_weight > 0 else None

    source = resolve_ann(settings, snn)
    source.unet.to(device)
    started = time.perf_counter()
    distill_samples = settings.distill_weight > 0 and settings.distill_target == "sample"
    eps_pool = settings.distill_weight > 0 and not distill_samples
    pool = build_pool(settings, source, record, device) if eps_pool else Pool.empty()
    pool_seconds = time.perf_counter() - started
    qat_distill = settings.method == "qat" and settings.distill_weight > 0
    held_out = held_out_inputs(settings, source, device) if qat_distill else None
    held_out_sample = held_out_samples(settings, source, device) if distill_samples else None
    sensitivity = None
    if settings.step_weighting == "sensitivity" and settings.distill_weight > 0:
        saved = resumed.get("step_sensitivity") if resumed is not None else None
        sensitivity = StepSensitivity.from_json(saved) if saved else step_sensitivity(settings, snn, source, device)
    if not distill_samples:  # the sample target's teacher samples fresh noises every step
        source.unet.to("cpu")

    refresh = None
    if settings.refresh_every and settings.distill_weight > 0:
        def refresh(generation: int) -> Pool:
            return refresh_pool(trainer.pool, settings, source, device, generation)
    thresholds_before = qat.thresholds_of(snn)
    trainer = Trainer(settings, snn, pool, images, schedule, device, refresh, held_out, sensitivity,
                      source if distill_samples else None, held_out_sample)
    if resumed is not None:
        trainer.load_state(resumed)
        loss_before = resumed["loss_before"]
        del resumed
    else:
        loss_before = trainer.evaluate()
    first_step = trainer.step

    def checkpoint() -> None:
        settings.out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(trainer.state(identity, recipe, loss_before), checkpoint_path, FinetuneError)
        write_loss_log(trainer.losses, LOSS_COLUMNS, settings.out / "loss_log.csv")

    desc = "fine-tuning (qat)" if settings.method == "qat" else f"fine-tuning ({settings.train})"
    step_times = run_steps(trainer, settings.steps, settings.checkpoint_every, checkpoint, desc, settings.time_limit)
    final_state = trainer.state(identity, recipe, loss_before)
    if trainer.ema:
        trainer.use_ema()
    if settings.method == "qat":
        qat.finish(snn)  # a plain converted model again: steps simulation, adapters merged
        snn.set_simulation("closed-form")  # which the steps equal: the after-loss at one pass per input
        loss_after = trainer.evaluate()
        snn.set_simulation("steps")
    else:
        freeze(snn)
        loss_after = trainer.evaluate()
    snn.register_to_config(provenance={**provenance, "finetune": {"from": str(settings.snn), "steps": trainer.step, **recipe}})
    values = tsm_values(snn)
    summary = {
        "snn": str(settings.snn),
        "ann": source.describe(),
        "recipe": recipe,
        "steps": trainer.step,
        "time_limit": settings.time_limit or None,
        "resumed_from_step": first_step if settings.resume else None,
        "trainable_parameters": sum(p.numel() for p in trainer.params),
        "device": device_name(device),
        "seconds": {
            "distillation_pool": round(pool_seconds, 3),
            "training_total": round(trainer.seconds, 3),
            "training_this_run": round(sum(step_times), 3),
        },
        "seconds_per_step": sum(step_times) / len(step_times) if step_times else None,
        "seconds_per_step_after_first": (sum(step_times[1:]) / (len(step_times) - 1)) if len(step_times) > 1 else None,
        "seconds_per_step_all_runs": trainer.seconds / trainer.step if trainer.step else None,
        "distillation_inputs": trainer.step * settings.batch_size if distill_samples else len(pool),
        "loss_before": loss_before,
        "loss_after": loss_after,
        "loss_note": "fp32 losses of the saved model (EMA values if --ema) on fixed inputs: "
                     + ("held-out ANN trajectories (seed 999, never trained on), computed in closed form (the "
                        "quantised twin, which the step simulation equals)" if qat_distill else
                        "evenly spread distillation-pool inputs")
                     + ("; distill_sample: MSE of the DDIM samples from --eval-size held-out noises (seed 999) "
                        "against the ANN's, the sample target's loss" if distill_samples else "")
                     + (" and the first data images with seeded noise" if settings.data_weight > 0 else ""),
    }
    if values:
        summary["tsm_mean_per_step"] = np.mean(np.array(list(values.values())), axis=0).tolist()
    if sensitivity is not None:
        summary["step_sensitivity"] = {"note": "per DDIM step of the fresh trajectories: the SNN's eps MSE, the "
                                               "final-sample MSE with the SNN at that step only, their ratio (gain); "
                                               "distillation inputs were drawn in proportion to the gain",
                                       **sensitivity.to_json()}
    if settings.method == "qat":
        summary["threshold_change"] = {"note": "median new/old threshold ratio per layer kind and side",
                                       **qat.threshold_changes(thresholds_before, snn)}
        summary["spike_rate"] = {
            "note": "mean spike units (ON + OFF counts) per neuron and SNN step of the twin, which the steps equal, "
                    "on the inputs of loss_before/loss_after (the distillation ones, else the data ones); "
                    "penalty_weight: --spike-penalty, the weight of the training batches' rate in the loss",
            "penalty_weight": settings.spike_penalty,
            "before": loss_before.get("spike_rate"),  # None: resumed from a checkpoint that did not measure it
            "after": loss_after["spike_rate"],
        }
    write_outputs(settings.out, snn, record, summary, values, trainer.losses, final_state)
    summary["out"] = str(settings.out)
    return summary
