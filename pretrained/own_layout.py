"""The "own layout" DDPM CIFAR-10 UNet (pytorch-ddpm `model.py` style `ckpt.pt`) <-> diffusers.

That network is exactly a diffusers `UNet2DModel` with a fixed set of options; only the tensor
names differ, plus two details: its timestep embedding is a frozen table of *interleaved*
sin/cos pairs (diffusers concatenates all sines, then all cosines, so the first time Linear's
input columns are permuted), and its attention projections are 1x1 convolutions (diffusers
uses Linear layers, so the 1x1 kernel is squeezed). Converting to diffusers lets the rest of
the toolkit treat these checkpoints like any other source model.

Checkpoints are untrusted: they are read with `torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel

from ..core import atomic
from ..core.errors import SdmError
from ..core.untrusted import load_weights_only

TIME_TABLE_KEY = "time_embedding.timembedding.0.weight"
# Rows of the regenerated timestep table: the DDPM CIFAR-10 schedule's number of steps.
TIME_TABLE_ROWS = 1000
# GroupNorm(32, C) is hard-coded throughout the own-layout network.
NORM_GROUPS = 32
# Stored tables may be fp16/bf16; interleaved vs concatenated order differs by O(1).
_TABLE_ATOL = 1e-2

# Parameter-name mapping kinds: plain copy, the permuted first time Linear, 1x1 conv <-> Linear.
_COPY, _TIME_IN, _ATTN = "copy", "time_in", "attn"

_RESNET_PARTS = (
    ("block1.0", "norm1"),
    ("block1.2", "conv1"),
    ("temb_proj.1", "time_emb_proj"),
    ("block2.0", "norm2"),
    ("block2.3", "conv2"),
    ("shortcut", "conv_shortcut"),
)
_ATTN_PARTS = (
    ("attn.proj_q", "to_q"),
    ("attn.proj_k", "to_k"),
    ("attn.proj_v", "to_v"),
    ("attn.proj", "to_out.0"),
)


class OwnLayoutError(SdmError):
    """An own-layout checkpoint, state dict or config that cannot be used."""


def _require_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OwnLayoutError(f"own-layout config: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def _int_list(name: str, value: Any, minimum: int) -> list[int]:
    if not isinstance(value, (list, tuple)):
        raise OwnLayoutError(f"own-layout config: {name} must be a list of integers, got {value!r}")
    return [_require_int(f"{name} entry", v, minimum) for v in value]


@dataclass
class OwnLayoutConfig:
    """The own-layout `UNet(T, ch, ch_mult, attn, num_res_blocks, dropout)` arguments that shape the weights."""

    ch: int
    ch_mult: list[int]
    attn: list[int]
    num_res_blocks: int
    dropout: float = 0.1
    sample_size: int = 32
    in_channels: int = 3

    def __post_init__(self) -> None:
        """Validate here so a hand-written or JSON config fails with one line, not deep in diffusers."""
        _require_int("ch", self.ch, 1)
        if self.ch % NORM_GROUPS:
            raise OwnLayoutError(f"own-layout config: ch must be a multiple of {NORM_GROUPS}, got {self.ch}")
        self.ch_mult = _int_list("ch_mult", self.ch_mult, 1)
        if not self.ch_mult or self.ch_mult[0] != 1:
            # diffusers ties conv_in and the time embedding width to the first level's channels.
            raise OwnLayoutError(f"own-layout config: ch_mult must start with 1, got {self.ch_mult}")
        self.attn = sorted(set(_int_list("attn", self.attn, 0)))
        if self.attn and self.attn[-1] >= len(self.ch_mult):
            raise OwnLayoutError(
                f"own-layout config: attn level {self.attn[-1]} is out of range for {len(self.ch_mult)} levels"
            )
        _require_int("num_res_blocks", self.num_res_blocks, 1)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise OwnLayoutError(f"own-layout config: dropout must be a number in [0, 1), got {self.dropout!r}")
        self.dropout = float(self.dropout)
        _require_int("sample_size", self.sample_size, 1)
        _require_int("in_channels", self.in_channels, 1)

    @property
    def channels(self) -> list[int]:
        """Output channels of each resolution level."""
        return [self.ch * m for m in self.ch_mult]

    def to_diffusers_config(self) -> dict[str, Any]:
        """`UNet2DModel(**cfg)` kwargs for the same network; all options explicit, so diffusers defaults cannot drift."""
        levels = range(len(self.ch_mult))
        down = ["AttnDownBlock2D" if i in self.attn else "DownBlock2D" for i in levels]
        up = ["AttnUpBlock2D" if i in self.attn else "UpBlock2D" for i in reversed(levels)]
        return {
            "sample_size": self.sample_size,
            "in_channels": self.in_channels,
            "out_channels": self.in_channels,
            "center_input_sample": False,
            "time_embedding_type": "positional",
            "time_embedding_dim": None,
            "freq_shift": 0,
            "flip_sin_to_cos": False,
            "down_block_types": down,
            "mid_block_type": "UNetMidBlock2D",
            "up_block_types": up,
            "block_out_channels": self.channels,
            "layers_per_block": self.num_res_blocks,
            "mid_block_scale_factor": 1,
            "downsample_padding": 1,
            "downsample_type": "conv",
            "upsample_type": "conv",
            "dropout": self.dropout,
            "act_fn": "silu",
            "attention_head_dim": None,
            "norm_num_groups": NORM_GROUPS,
            "attn_norm_num_groups": None,
            "norm_eps": 1e-5,
            "resnet_time_scale_shift": "default",
            "add_attention": True,
            "class_embed_type": None,
            "num_class_embeds": None,
        }

    @classmethod
    def from_diffusers_config(cls, config: Mapping[str, Any]) -> OwnLayoutConfig:
        """The own-layout config of a `UNet2DModel` config; OwnLayoutError if own layout cannot express it."""
        defaults = {
            name: p.default
            for name, p in inspect.signature(UNet2DModel.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        given = _plain({**defaults, **{k: v for k, v in config.items() if not k.startswith("_")}})
        channels = _int_list("block_out_channels", given["block_out_channels"], 1)
        if not channels or any(c % channels[0] for c in channels):
            raise OwnLayoutError(
                f"not expressible in own layout: block_out_channels {channels} are not multiples of the first"
            )
        down = given["down_block_types"]
        unknown = sorted(set(down) - {"DownBlock2D", "AttnDownBlock2D"})
        if unknown:
            raise OwnLayoutError(f"not expressible in own layout: down block type {unknown[0]}")
        sample_size = given["sample_size"]
        if isinstance(sample_size, list):
            if len(set(sample_size)) != 1:
                raise OwnLayoutError(f"not expressible in own layout: non-square sample_size {sample_size}")
            sample_size = sample_size[0]
        own = cls(
            ch=channels[0],
            ch_mult=[c // channels[0] for c in channels],
            attn=[i for i, kind in enumerate(down) if kind == "AttnDownBlock2D"],
            num_res_blocks=given["layers_per_block"],
            dropout=given["dropout"],
            sample_size=sample_size,
            in_channels=given["in_channels"],
        )
        for key, wanted in own.to_diffusers_config().items():
            if key != "sample_size" and given.get(key) != wanted:
                raise OwnLayoutError(
                    f"not expressible in own layout: {key} is {given.get(key)!r}, own layout needs {wanted!r}"
                )
        return own

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (plain ints, floats and lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OwnLayoutConfig:
        """Inverse of `to_dict`; rejects unknown or missing fields with one line."""
        if not isinstance(data, Mapping):
            raise OwnLayoutError(f"own-layout config must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise OwnLayoutError(f"own-layout config: unknown field {unknown[0]!r}")
        required = {f.name for f in fields(cls) if f.default is MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise OwnLayoutError(f"own-layout config: missing field {missing[0]!r}")
        return cls(**data)


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively, so configs from JSON and from code compare equal."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _module_map(cfg: OwnLayoutConfig) -> dict[str, tuple[str, str]]:
    """own module prefix -> (diffusers module prefix, mapping kind), for every module the config can have.

    `shortcut` entries exist for every ResBlock; the weights carry them only where in != out,
    and the key/shape check against the expected state dict sorts that out.
    """
    pairs: dict[str, tuple[str, str]] = {
        "head": ("conv_in", _COPY),
        "time_embedding.timembedding.1": ("time_embedding.linear_1", _TIME_IN),
        "time_embedding.timembedding.3": ("time_embedding.linear_2", _COPY),
        "tail.0": ("conv_norm_out", _COPY),
        "tail.2": ("conv_out", _COPY),
    }

    def resblock(own: str, resnet: str, attention: str | None) -> None:
        for own_part, diffusers_part in _RESNET_PARTS:
            pairs[f"{own}.{own_part}"] = (f"{resnet}.{diffusers_part}", _COPY)
        if attention is not None:
            pairs[f"{own}.attn.group_norm"] = (f"{attention}.group_norm", _COPY)
            for own_part, diffusers_part in _ATTN_PARTS:
                pairs[f"{own}.{own_part}"] = (f"{attention}.{diffusers_part}", _ATTN)

    levels = len(cfg.ch_mult)
    index = 0
    for level in range(levels):
        for j in range(cfg.num_res_blocks):
            attention = f"down_blocks.{level}.attentions.{j}" if level in cfg.attn else None
            resblock(f"downblocks.{index}", f"down_blocks.{level}.resnets.{j}", attention)
            index += 1
        if level < levels - 1:
            pairs[f"downblocks.{index}.main"] = (f"down_blocks.{level}.downsamplers.0.conv", _COPY)
            index += 1
    resblock("middleblocks.0", "mid_block.resnets.0", "mid_block.attentions.0")
    resblock("middleblocks.1", "mid_block.resnets.1", None)
    index = 0
    for block, level in enumerate(reversed(range(levels))):
        for j in range(cfg.num_res_blocks + 1):
            attention = f"up_blocks.{block}.attentions.{j}" if level in cfg.attn else None
            resblock(f"upblocks.{index}", f"up_blocks.{block}.resnets.{j}", attention)
            index += 1
        if level > 0:
            pairs[f"upblocks.{index}.main"] = (f"up_blocks.{block}.upsamplers.0.conv", _COPY)
            index += 1
    return pairs


def _time_permutation(ch: int) -> torch.Tensor:
    """Own (interleaved sin/cos) column index for each diffusers ([sin..., cos...]) column."""
    return torch.cat([torch.arange(0, ch, 2), torch.arange(1, ch, 2)])


def _convert(tensor: torch.Tensor, param: str, kind: str, to_diffusers: bool) -> torch.Tensor:
    if param != "weight" or kind == _COPY:
        return tensor
    if kind == _ATTN:
        return tensor.flatten(1) if to_diffusers else tensor[:, :, None, None]
    perm = _time_permutation(tensor.shape[1]).to(tensor.device)
    return tensor[:, perm] if to_diffusers else tensor[:, torch.argsort(perm)]


def _meta_unet(cfg: OwnLayoutConfig) -> UNet2DModel:
    """The diffusers UNet for `cfg` without allocating or initialising weights."""
    with torch.device("meta"):
        return UNet2DModel(**cfg.to_diffusers_config())


def _describe(cfg: OwnLayoutConfig) -> str:
    return f"ch={cfg.ch}, ch_mult={cfg.ch_mult}, attn={cfg.attn}, num_res_blocks={cfg.num_res_blocks}"


def _require_str_keys(sd: Mapping[Any, Any], what: str) -> None:
    odd = next((k for k in sd if not isinstance(k, str)), None)
    if odd is not None:
        raise OwnLayoutError(f"{what} has a non-string key {odd!r}")


def _check_tensors(
    sd: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], what: str, cfg: OwnLayoutConfig
) -> None:
    """OwnLayoutError naming the first few missing, unexpected or misshapen entries."""
    _require_str_keys(sd, what)
    problems = [f"unexpected key {k}" for k in sorted(set(sd) - set(expected))]
    problems += [f"missing key {k}" for k in sorted(set(expected) - set(sd))]
    for key in sorted(set(sd) & set(expected)):
        value = sd[key]
        if not isinstance(value, torch.Tensor):
            problems.append(f"{key} is a {type(value).__name__}, not a tensor")
        elif tuple(value.shape) != expected[key]:
            problems.append(f"{key} has shape {tuple(value.shape)}, expected {expected[key]}")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        listed = "; ".join(problems[:3])
        raise OwnLayoutError(f"{what} does not fit the own-layout UNet ({_describe(cfg)}): {listed}{more}")


def _translate(
    sd: Mapping[str, torch.Tensor], pairs: Mapping[str, tuple[str, str]], to_diffusers: bool
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        module, _, param = key.rpartition(".")
        target, kind = pairs[module]
        out[f"{target}.{param}"] = _convert(tensor, param, kind, to_diffusers)
    return out


def _inverse(pairs: Mapping[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    return {diffusers: (own, kind) for own, (diffusers, kind) in pairs.items()}


def sinusoidal_time_table(rows: int, ch: int) -> torch.Tensor:
    """The own layout's frozen timestep table: row t = interleaved (sin, cos) of t * 10000^(-2k/ch)."""
    freqs = torch.exp(-torch.arange(0, ch, 2, dtype=torch.float32) / ch * math.log(10000))
    angles = torch.arange(rows, dtype=torch.float32)[:, None] * freqs[None, :]
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).view(rows, ch)


def _expected_own_shapes(cfg: OwnLayoutConfig, table_rows: int) -> dict[str, tuple[int, ...]]:
    meta = _translate(_meta_unet(cfg).state_dict(), _inverse(_module_map(cfg)), to_diffusers=False)
    shapes = {k: tuple(v.shape) for k, v in meta.items()}
    shapes[TIME_TABLE_KEY] = (table_rows, cfg.ch)
    return shapes


def _table_rows(sd: Mapping[str, Any]) -> int:
    """Any number of rows (the training T) is fine; only the width and the values are checked."""
    table = sd.get(TIME_TABLE_KEY)
    return table.shape[0] if isinstance(table, torch.Tensor) and table.dim() == 2 else TIME_TABLE_ROWS


def own_to_diffusers_state_dict(sd: Mapping[str, torch.Tensor], cfg: OwnLayoutConfig) -> dict[str, torch.Tensor]:
    """Own-layout tensors renamed (and permuted/squeezed) for `UNet2DModel(**cfg.to_diffusers_config())`.

    The timestep table is dropped (diffusers computes it), after checking it holds the
    interleaved sinusoids the column permutation assumes.
    """
    _check_tensors(sd, _expected_own_shapes(cfg, _table_rows(sd)), "own-layout state dict", cfg)
    table = sd[TIME_TABLE_KEY].detach().to("cpu", torch.float32)
    if not torch.allclose(table, sinusoidal_time_table(table.shape[0], cfg.ch), atol=_TABLE_ATOL):
        raise OwnLayoutError(f"{TIME_TABLE_KEY} is not the interleaved sin/cos table of the own layout")
    weights = {k: v for k, v in sd.items() if k != TIME_TABLE_KEY}
    return _translate(weights, _module_map(cfg), to_diffusers=True)


def diffusers_to_own_state_dict(sd: Mapping[str, torch.Tensor], cfg: OwnLayoutConfig) -> dict[str, torch.Tensor]:
    """Inverse of `own_to_diffusers_state_dict`; the timestep table is regenerated with 1000 rows."""
    expected = {k: tuple(v.shape) for k, v in _meta_unet(cfg).state_dict().items()}
    _check_tensors(sd, expected, "diffusers state dict", cfg)
    own = _translate(sd, _inverse(_module_map(cfg)), to_diffusers=False)
    reference = sd["conv_in.weight"]
    own[TIME_TABLE_KEY] = sinusoidal_time_table(TIME_TABLE_ROWS, cfg.ch).to(reference.device, reference.dtype)
    return own


def _shape(sd: Mapping[str, Any], key: str) -> tuple[int, ...] | None:
    value = sd.get(key)
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def infer_own_layout_config(
    state_dict: Mapping[str, Any], *, sample_size: int = 32, dropout: float = 0.1
) -> OwnLayoutConfig:
    """Recover the architecture from key names and shapes (weights carry no config).

    Levels are the runs of ResBlocks between DownSamples; a level has attention when its
    ResBlocks carry `attn.proj_q`. The result is then checked against every tensor.
    """
    if not isinstance(state_dict, Mapping):
        raise OwnLayoutError(f"not an own-layout state dict: got a {type(state_dict).__name__}")
    _require_str_keys(state_dict, "own-layout state dict")
    head = _shape(state_dict, "head.weight")
    if head is None:
        raise OwnLayoutError("not an own-layout DDPM state dict: no head.weight tensor")
    if len(head) != 4 or head[2:] != (3, 3):
        raise OwnLayoutError(f"head.weight has shape {head}, expected (ch, in_channels, 3, 3)")
    ch, in_channels = head[0], head[1]
    if ch % NORM_GROUPS:
        raise OwnLayoutError(f"head.weight has {ch} output channels, own layout needs a multiple of {NORM_GROUPS}")

    numbers = {k.split(".")[1] for k in state_dict if k.startswith("downblocks.")}
    indices = sorted(int(n) for n in numbers if n.isdigit())
    if not indices or indices != list(range(len(indices))) or len(indices) != len(numbers):
        raise OwnLayoutError("own-layout state dict: downblocks are missing or not numbered 0..n-1")
    levels: list[list[tuple[int, bool]]] = [[]]  # per level: (out channels, has attention) per ResBlock
    for i in indices:
        prefix = f"downblocks.{i}."
        if prefix + "main.weight" in state_dict:
            levels.append([])
            continue
        conv = _shape(state_dict, prefix + "block1.2.weight")
        if conv is None or len(conv) != 4:
            raise OwnLayoutError(f"own-layout state dict: downblocks.{i} is neither a ResBlock nor a DownSample")
        levels[-1].append((conv[0], prefix + "attn.proj_q.weight" in state_dict))

    counts = [len(level) for level in levels]
    if min(counts) == 0 or len(set(counts)) != 1:
        raise OwnLayoutError(f"own-layout state dict: ResBlocks per level are inconsistent: {counts}")
    ch_mult: list[int] = []
    attn: list[int] = []
    for number, level in enumerate(levels):
        widths = {width for width, _ in level}
        if len(widths) != 1 or next(iter(widths)) % ch:
            raise OwnLayoutError(
                f"own-layout state dict: level {number} ResBlock widths {sorted(widths)} are not one multiple of ch={ch}"
            )
        ch_mult.append(next(iter(widths)) // ch)
        flags = {has_attn for _, has_attn in level}
        if len(flags) != 1:
            raise OwnLayoutError(f"own-layout state dict: level {number} has attention on only some ResBlocks")
        if flags == {True}:
            attn.append(number)

    cfg = OwnLayoutConfig(
        ch=ch,
        ch_mult=ch_mult,
        attn=attn,
        num_res_blocks=counts[0],
        dropout=dropout,
        sample_size=sample_size,
        in_channels=in_channels,
    )
    _check_tensors(state_dict, _expected_own_shapes(cfg, _table_rows(state_dict)), "own-layout state dict", cfg)
    return cfg


def _select_weights(checkpoint: Any, path: Path, prefer_ema: bool) -> tuple[Mapping[str, Any], str]:
    if not isinstance(checkpoint, Mapping):
        raise OwnLayoutError(f"{path}: holds a {type(checkpoint).__name__}, not an own-layout checkpoint dict")
    for name in ("ema_model", "net_model") if prefer_ema else ("net_model", "ema_model"):
        if name in checkpoint:
            weights = checkpoint[name]
            if not isinstance(weights, Mapping):
                raise OwnLayoutError(f"{path}: {name} is a {type(weights).__name__}, not a state dict")
            return weights, name
    if "head.weight" in checkpoint:
        return checkpoint, "state_dict"
    raise OwnLayoutError(f"{path}: no ema_model, net_model or own-layout weights (head.weight) in the checkpoint")


def load_own_layout_checkpoint(
    path: str | os.PathLike[str], config: OwnLayoutConfig | None = None, prefer_ema: bool = True
) -> tuple[UNet2DModel, dict[str, Any]]:
    """An own-layout `ckpt.pt` as an fp32 diffusers UNet in eval mode, plus where its weights came from.

    `config` replaces inference (e.g. to set sample_size or dropout); it must fit the tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise OwnLayoutError(f"own-layout checkpoint not found: {path}")
    weights, source = _select_weights(load_weights_only(path, OwnLayoutError), path, prefer_ema)
    cfg = config if config is not None else infer_own_layout_config(weights)
    converted = own_to_diffusers_state_dict(weights, cfg)
    # Uninitialised storage is enough: strict loading overwrites every tensor.
    unet = _meta_unet(cfg).to_empty(device="cpu").float()
    unet.load_state_dict(converted, strict=True)
    unet.eval()
    return unet, {"format": "own-layout", "weights": source, "config": cfg.to_dict()}


def save_own_layout_checkpoint(unet: UNet2DModel, path: str | os.PathLike[str]) -> None:
    """Write `unet` as an own-layout `ckpt.pt` (fp32, same weights as net_model and ema_model), atomically."""
    cfg = OwnLayoutConfig.from_diffusers_config(unet.config)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in unet.state_dict().items()}
    own = diffusers_to_own_state_dict(state, cfg)
    atomic.torch_save({"net_model": own, "ema_model": own}, Path(path), OwnLayoutError)
