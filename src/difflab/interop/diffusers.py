"""diffusers pipeline folders (``DDPMPipeline`` / ``DDIMPipeline.save_pretrained``) in and out of difflab runs.

A ``UNet2DModel`` maps onto difflab's own U-Net (models/unet.py) parameter by parameter: the imported run is an
ordinary run folder that loads without diffusers.  The scheduler's beta table and prediction type become a
difflab schedule and the prediction of the one Denoiser (models/denoiser.py).  diffusers is an optional extra
(``pip install 'difflab[diffusers]'``), imported only inside the functions that read or write its folders.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor

from .. import schedules
from ..errors import UserError
from ..models.denoiser import Denoiser
from ..models.embeddings import TIME_RANGE
from ..models.networks import network_spec
from ..models.unet import UNet, UNetConfig
from ..schedules import DiscreteSchedule
from ..utils.config import ConfigError

EXTRA_HINT = "pip install 'difflab[diffusers]'"

#: diffusers prediction_type <-> difflab prediction (models/denoiser.py); "score" has no diffusers name.
PREDICTION_FROM_DIFFUSERS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
PREDICTION_TO_DIFFUSERS = {v: k for k, v in PREDICTION_FROM_DIFFUSERS.items()}

_RES = (("norm1", "norm1"), ("conv1", "conv1"), ("emb", "time_emb_proj"), ("norm2", "norm2"), ("conv2", "conv2"),
        ("skip", "conv_shortcut"))
_ATTN = (("norm", "group_norm"), ("proj", "to_out.0"))


def require_diffusers() -> Any:
    """The diffusers module, or a one-line UserError naming the extra to install."""
    try:
        import diffusers
    except ImportError:
        raise UserError(f"reading or writing diffusers folders needs the optional diffusers extra: {EXTRA_HINT}") from None
    return diffusers


# ---- the architecture ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TimeFeatures:
    """How diffusers' sinusoidal time projection is expressed in difflab's TimeEmbedding.

    diffusers: [sin(t w_i), cos(t w_i)] (flip_sin_to_cos swaps the halves), w_i = 10000^(-i / (half - freq_shift)).
    difflab's "sinusoidal" is [cos, sin] with freq_shift 0; any other case uses the "fourier" features, whose
    frequency buffer is set to w_i exactly; ``swap`` permutes the first linear layer's input columns to match.
    """

    kind: str  # "sinusoidal" or "fourier"
    swap: bool
    freqs: Tensor | None  # difflab FourierEmbedding.freqs when kind == "fourier"


def diffusers_frequencies(dim: int, freq_shift: float) -> Tensor:
    """w_i = exp(-log(10000) i / (half - freq_shift)), i < dim // 2, in float32 as diffusers computes them (Ho et al. 2020, appendix B)."""
    half = dim // 2
    return torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / (half - freq_shift))


def table_time_scale(table: Tensor) -> float | None:
    """The time_scale s if a learned time table [T, dim] holds difflab's sinusoidal features of s t, t = 0..T-1
    (what :func:`export_run` writes for s != 1), else None."""
    from ..models.embeddings import sinusoidal_embedding

    T, dim = table.shape
    t = torch.arange(T, dtype=torch.float32)
    for scale in (TIME_RANGE / (T - 1), 1.0):
        if torch.allclose(sinusoidal_embedding(t * scale, dim), table.float(), rtol=0.0, atol=1e-6):
            return scale
    return None


def _attention(cfg: Mapping[str, Any], widths: list[int], down: list[str]) -> tuple[tuple[int, ...], int | None]:
    """(attention levels, the one head count of every attention width incl. the middle block's, or None)."""
    levels = tuple(i for i, t in enumerate(down) if t.startswith("Attn"))
    head_dim = cfg.get("attention_head_dim", 8)
    att_widths = [widths[i] for i in levels if i < len(widths)] + widths[-1:]
    heads = {w // (head_dim or w) for w in att_widths}
    ok = len(heads) == 1 and all(w % (head_dim or w) == 0 for w in att_widths)
    return levels, heads.pop() if ok else None


def _time_features(cfg: Mapping[str, Any], width: int, learned: bool) -> TimeFeatures:
    """difflab's time features equal to a UNet2DModel's time projection (``learned``: a table difflab wrote)."""
    flip, shift = bool(cfg.get("flip_sin_to_cos", True)), float(cfg.get("freq_shift", 0))
    if learned:  # the table is difflab's [cos, sin] features of time_scale t
        return TimeFeatures("sinusoidal", swap=False, freqs=None)
    if shift == 0:  # difflab's sinusoidal features are diffusers' with freq_shift 0 in the order [cos, sin]
        return TimeFeatures("sinusoidal", swap=not flip, freqs=None)
    # difflab's Fourier features [sin(2 pi f t / 1000), cos(...)]: f = w 1000 / (2 pi) gives sin(w t)
    w = diffusers_frequencies(width, shift).to(torch.float64)
    return TimeFeatures("fourier", swap=flip, freqs=(w * (TIME_RANGE / (2.0 * math.pi))).to(torch.float32))


def unet_config_from_diffusers(cfg: Mapping[str, Any], sd: Mapping[str, Tensor] | None = None,
                               time_unit: float = 1.0) -> tuple[UNetConfig, TimeFeatures]:
    """difflab UNetConfig equal to a UNet2DModel config (``sd``: its weights, to recognise a learned time table
    that difflab wrote); ``time_unit``: diffusers' timestep per unit of difflab's time (1 for DDPM tables, whose
    time is the step index; T for the flow path, timestep = sigma T); UserError naming every setting that does not map."""
    bad: list[str] = []
    found = (table_time_scale(sd["time_proj.weight"]) if cfg.get("time_embedding_type") == "learned" and sd is not None
             and "time_proj.weight" in sd and time_unit == 1.0 else None)
    learned, time_scale = found is not None, found if found is not None else float(time_unit)

    def want(key: str, ok: bool, note: str = "") -> None:
        if not ok:
            bad.append(f"{key}={cfg.get(key)!r}" + (f" ({note})" if note else ""))

    widths = [int(w) for w in cfg.get("block_out_channels", ())]
    down, up = list(cfg.get("down_block_types", ())), list(cfg.get("up_block_types", ()))
    L = len(widths)
    want("block_out_channels", L >= 1)
    want("down_block_types", len(down) == L and all(t in ("DownBlock2D", "AttnDownBlock2D") for t in down),
         "only DownBlock2D / AttnDownBlock2D map")
    mirrored = ["AttnUpBlock2D" if t == "AttnDownBlock2D" else "UpBlock2D" for t in reversed(down)]
    want("up_block_types", up == mirrored, f"must mirror the down blocks: {mirrored}")
    want("mid_block_type", cfg.get("mid_block_type", "UNetMidBlock2D") == "UNetMidBlock2D")
    want("add_attention", bool(cfg.get("add_attention", True)), "difflab's middle block always has attention")
    want("center_input_sample", not cfg.get("center_input_sample", False))
    want("time_embedding_type", cfg.get("time_embedding_type", "positional") == "positional" or learned,
         "only the sinusoidal 'positional' embedding maps, or a learned table of difflab's own sinusoidal features"
         + ("" if time_unit == 1.0 else " (a table cannot be looked up at a flow scheduler's fractional timesteps)"))
    want("time_embedding_dim", cfg.get("time_embedding_dim") in (None, 4 * widths[0] if widths else None),
         "difflab's embedding width is 4 x block_out_channels[0]")
    want("act_fn", cfg.get("act_fn", "silu") == "silu")
    want("norm_eps", float(cfg.get("norm_eps", 1e-5)) == 1e-5, "difflab's GroupNorm uses eps 1e-5")
    want("downsample_padding", int(cfg.get("downsample_padding", 1)) == 1)
    want("downsample_type", cfg.get("downsample_type", "conv") == "conv")
    want("upsample_type", cfg.get("upsample_type", "conv") == "conv")
    want("mid_block_scale_factor", float(cfg.get("mid_block_scale_factor", 1)) == 1.0)
    scale_shift = cfg.get("resnet_time_scale_shift", "default") == "scale_shift"
    want("attn_norm_num_groups", cfg.get("attn_norm_num_groups") == cfg.get("norm_num_groups", 32)
         or (cfg.get("attn_norm_num_groups") is None and not scale_shift),
         "with scale_shift and no attn_norm_num_groups diffusers' middle attention has no GroupNorm; difflab's has")
    want("resnet_time_scale_shift", cfg.get("resnet_time_scale_shift", "default") in ("default", "scale_shift"))
    want("class_embed_type", cfg.get("class_embed_type") is None, "only a label table (num_class_embeds) maps")
    attention_levels, heads = _attention(cfg, widths, down)
    want("attention_head_dim", heads is not None,
         "difflab uses one head count at every attention level, so every attention width / head width must agree")
    if bad:
        raise UserError("this UNet2DModel does not map onto difflab's U-Net: " + "; ".join(bad))

    time = _time_features(cfg, widths[0], learned)
    try:
        dl = UNetConfig(in_channels=int(cfg["in_channels"]), out_channels=int(cfg["out_channels"]), channels=widths[0],
                        channel_mult=tuple(w // widths[0] for w in widths), num_res_blocks=int(cfg["layers_per_block"]),
                        attention_levels=attention_levels, num_heads=heads,
                        dropout=float(cfg.get("dropout", 0.0)), groups=int(cfg.get("norm_num_groups", 32)),
                        time_embedding=time.kind, time_injection=("adagn" if cfg.get("resnet_time_scale_shift") ==
                                                                  "scale_shift" else "add"),
                        time_scale=time_scale, num_classes=int(cfg.get("num_class_embeds") or 0))
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"this UNet2DModel does not map onto difflab's U-Net: {e}") from None
    if any(w % widths[0] for w in widths):
        raise UserError(f"block_out_channels={widths}: difflab's widths are multiples of the first one")
    return dl, time


def _pairs(cfg: UNetConfig) -> Iterator[tuple[str, str, str]]:
    """(difflab prefix, diffusers prefix, kind) of every mapped module; kind is "plain", "res" or "attn"."""
    L, R = len(cfg.channel_mult), cfg.num_res_blocks
    yield "input_conv", "conv_in", "plain"
    yield "time_embed.mlp.0", "time_embedding.linear_1", "plain"
    yield "time_embed.mlp.2", "time_embedding.linear_2", "plain"
    k = 0
    for level in range(L):
        for j in range(R):
            yield f"down.{k}.res", f"down_blocks.{level}.resnets.{j}", "res"
            if level in cfg.attention_levels:
                yield f"down.{k}.attn", f"down_blocks.{level}.attentions.{j}", "attn"
            k += 1
        if level < L - 1:
            yield f"downsample.{level}.conv", f"down_blocks.{level}.downsamplers.0.conv", "plain"
    yield "mid.0.res", "mid_block.resnets.0", "res"
    yield "mid.0.attn", "mid_block.attentions.0", "attn"
    yield "mid.1.res", "mid_block.resnets.1", "res"
    k = 0
    for i, level in enumerate(range(L - 1, -1, -1)):
        for j in range(R + 1):
            yield f"up.{k}.res", f"up_blocks.{i}.resnets.{j}", "res"
            if level in cfg.attention_levels:
                yield f"up.{k}.attn", f"up_blocks.{i}.attentions.{j}", "attn"
            k += 1
        if level > 0:
            yield f"upsample.{i}.conv", f"up_blocks.{i}.upsamplers.0.conv", "plain"
    yield "out_norm", "conv_norm_out", "plain"
    yield "out_conv", "conv_out", "plain"


def _names(cfg: UNetConfig) -> Iterator[tuple[str, str]]:
    """(difflab name, diffusers name) of every tensor that maps one to one (the attention's q, k, v are fused in difflab)."""
    for dl, df, kind in _pairs(cfg):
        subs = {"plain": (("", ""),), "res": tuple((f".{a}", f".{b}") for a, b in _RES),
                "attn": tuple((f".{a}", f".{b}") for a, b in _ATTN)}[kind]
        for a, b in subs:
            for p in ("weight", "bias"):
                yield f"{dl}{a}.{p}", f"{df}{b}.{p}"


def _swap_halves(w: Tensor, dim: int) -> Tensor:
    """Exchange the first and second half of the first `2 (dim // 2)` input columns (sin/cos order)."""
    half = dim // 2
    return torch.cat([w[:, half:2 * half], w[:, :half], w[:, 2 * half:]], dim=1)


def state_dict_from_diffusers(sd: Mapping[str, Tensor], cfg: UNetConfig, time: TimeFeatures) -> dict[str, Tensor]:
    """difflab UNet state dict from a UNet2DModel state dict (every diffusers tensor used exactly once)."""
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for dl, df in _names(cfg):
        if df in sd:
            out[dl] = sd[df]
            used.add(df)
    for dl, df, kind in _pairs(cfg):
        if kind == "attn":
            for p in ("weight", "bias"):
                keys = [f"{df}.to_{c}.{p}" for c in "qkv"]
                out[f"{dl}.qkv.{p}"] = torch.cat([sd[k] for k in keys], dim=0)
                used.update(keys)
    if time.swap:
        out["time_embed.mlp.0.weight"] = _swap_halves(out["time_embed.mlp.0.weight"], cfg.channels)
    if time.freqs is not None:
        out["time_embed.features.freqs"] = time.freqs.clone()
    if "time_proj.weight" in sd:  # a learned table recognised as difflab's features (table_time_scale)
        used.add("time_proj.weight")
    if cfg.num_classes:  # diffusers' table has no null label; difflab's null row (index num_classes) adds nothing
        table = sd["class_embedding.weight"]
        out["label_embed.table.weight"] = torch.cat([table, table.new_zeros(1, table.shape[1])])
        used.add("class_embedding.weight")
    left = sorted(set(sd) - used)
    if left:
        raise UserError(f"UNet2DModel weights with no place in difflab's U-Net: {', '.join(left[:5])}"
                        + (" ..." if len(left) > 5 else ""))
    return out


# ---- schedules -----------------------------------------------------------------------------------------
def schedule_from_scheduler(cfg: Mapping[str, Any]) -> schedules.Schedule:
    """The difflab schedule of a diffusers scheduler config: a DDPM table (beta_schedule, num_train_timesteps, or
    trained_betas), or the flow path for FlowMatchEulerDiscreteScheduler (its ``_class_name``)."""
    check_scheduler_config(cfg)
    if cfg.get("_class_name") == FLOW_SCHEDULER:
        return schedules.get("flow")
    T = int(cfg.get("num_train_timesteps", 1000))
    if cfg.get("rescale_betas_zero_snr"):
        raise UserError("scheduler rescale_betas_zero_snr=True: a zero terminal SNR (beta_T = 1) has no difflab schedule")
    if cfg.get("trained_betas") is not None:
        return DiscreteSchedule(torch.tensor(cfg["trained_betas"], dtype=torch.float64))
    kind = cfg["beta_schedule"]
    start, end = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
    try:
        if kind == "linear":
            return schedules.get("linear", T=T, beta_start=start, beta_end=end)
        if kind == "scaled_linear":  # beta_t = (linspace(sqrt(beta_1), sqrt(beta_T)))^2
            return schedules.get("quadratic", T=T, beta_start=start, beta_end=end)
        if kind == "squaredcos_cap_v2":  # Nichol & Dhariwal 2021, eq. 17 with s = 0.008, beta <= 0.999
            return schedules.get("cosine", T=T)
        if kind == "sigmoid":  # sigmoid(linspace(-6, 6)) between beta_start and beta_end
            return schedules.get("sigmoid", T=T, beta_start=start, beta_end=end)
    except (ConfigError, ValueError) as e:
        raise UserError(f"scheduler beta_schedule={kind!r}: {e}") from None
    raise UserError(f"scheduler beta_schedule={kind!r} has no difflab schedule (linear, scaled_linear, "
                    "squaredcos_cap_v2, sigmoid or trained_betas map)")


#: diffusers scheduler classes whose saved config difflab reads (as JSON; the class itself is never instantiated):
#: each holds a DDPM beta table and a prediction type, or the flow path (FLOW_SCHEDULER); the value is how its
#: constructor clips the x0 estimate.
SCHEDULERS: dict[str, dict[str, Any]] = {"DDPMScheduler": {"clip_sample": True}, "DDIMScheduler": {"clip_sample": True},
                                         "PNDMScheduler": {}, "DPMSolverMultistepScheduler": {},
                                         "EulerDiscreteScheduler": {}, "FlowMatchEulerDiscreteScheduler": {}}
#: diffusers' flow-matching scheduler: x_t = (1 - sigma) x_0 + sigma noise, the network sees timestep = sigma T and
#: predicts the velocity noise - x_0, which is difflab's ``flow`` schedule with the ``flow`` prediction.
FLOW_SCHEDULER = "FlowMatchEulerDiscreteScheduler"
#: FlowMatchEulerDiscreteScheduler options that change the path or the meaning of its timesteps (refused unless default)
FLOW_FIXED = {"shift": 1.0, "use_dynamic_shifting": False, "invert_sigmas": False, "shift_terminal": None,
              "stochastic_sampling": False}
#: diffusers' defaults for the x0 clipping options (DDPMScheduler.__init__).
CLIPPING = {"clip_sample": False, "clip_sample_range": 1.0, "thresholding": False, "dynamic_thresholding_ratio": 0.995,
            "sample_max_value": 1.0}
MAX_T = 100_000  # as training/checkpoint.py bounds a run's table
FLOW_TIMESTEPS = 1000  # num_train_timesteps of an exported flow run: diffusers' timestep = 1000 sigma


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_scheduler_config(cfg: Mapping[str, Any]) -> None:
    """UserError unless a scheduler config says what difflab needs and nothing it would misread: a beta_schedule or
    trained_betas (never a silent default), a known prediction_type, bounded T and betas, sane clipping options."""
    def no(key: str, why: str) -> UserError:
        return UserError(f"scheduler {key}={json.dumps(cfg.get(key))[:60]}: {why}")

    if cfg.get("_class_name") == FLOW_SCHEDULER:
        return check_flow_scheduler_config(cfg)
    if cfg.get("beta_schedule") is None and cfg.get("trained_betas") is None:
        raise UserError("scheduler config has neither beta_schedule nor trained_betas; difflab does not guess the "
                        "noise schedule")
    if cfg.get("prediction_type", "epsilon") not in PREDICTION_FROM_DIFFUSERS:
        raise no("prediction_type", f"difflab maps {', '.join(PREDICTION_FROM_DIFFUSERS)}")
    T = cfg.get("num_train_timesteps", 1000)
    if not (isinstance(T, int) and not isinstance(T, bool) and 2 <= T <= MAX_T):
        raise no("num_train_timesteps", f"expected an integer in [2, {MAX_T}]")
    betas = cfg.get("trained_betas")
    if betas is not None and not (isinstance(betas, list) and 2 <= len(betas) <= MAX_T
                                  and all(_number(b) and 0 < b < 1 for b in betas)):
        raise UserError(f"scheduler trained_betas: expected 2 to {MAX_T} numbers in (0, 1)")
    for key in ("beta_start", "beta_end"):
        if key in cfg and not (_number(cfg[key]) and 0 < cfg[key] < 1):
            raise no(key, "expected a number in (0, 1)")
    for key in ("clip_sample", "thresholding"):
        if key in cfg and not isinstance(cfg[key], bool):
            raise no(key, "expected true or false")
    for key in ("clip_sample_range", "sample_max_value"):
        if key in cfg and not (_number(cfg[key]) and cfg[key] > 0):
            raise no(key, "expected a number > 0")
    if "dynamic_thresholding_ratio" in cfg and not (_number(cfg["dynamic_thresholding_ratio"])
                                                    and 0 < cfg["dynamic_thresholding_ratio"] <= 1):
        raise no("dynamic_thresholding_ratio", "expected a number in (0, 1]")


def check_flow_scheduler_config(cfg: Mapping[str, Any]) -> None:
    """UserError unless a FlowMatchEulerDiscreteScheduler config is the plain linear path difflab's ``flow`` schedule is:
    shift 1, no dynamic shifting, no inverted sigmas, no terminal shift, deterministic steps; T in [2, MAX_T]."""
    T = cfg.get("num_train_timesteps", 1000)
    if not (isinstance(T, int) and not isinstance(T, bool) and 2 <= T <= MAX_T):
        raise UserError(f"scheduler num_train_timesteps={json.dumps(T)[:40]}: expected an integer in [2, {MAX_T}]")
    off = [f"{k}={json.dumps(cfg.get(k))[:40]}" for k, v in FLOW_FIXED.items() if cfg.get(k, v) != v]
    if off:
        raise UserError(f"{FLOW_SCHEDULER} with {', '.join(off)}: only the unshifted path x_t = (1 - sigma) x_0 + "
                        "sigma noise (shift 1) is difflab's flow schedule")


def clipping_record(cfg: Mapping[str, Any], cls_name: str) -> dict[str, Any]:
    """How the imported scheduler clips the x0 estimate (its file's values, else its constructor's defaults)."""
    full = {**CLIPPING, **SCHEDULERS.get(cls_name, {}), **{k: cfg[k] for k in CLIPPING if k in cfg}}
    return {k: (bool(v) if isinstance(CLIPPING[k], bool) else float(v)) for k, v in full.items()}


def clipped_as_imported(model: Any, imported: Mapping[str, Any]) -> Any:
    """The denoiser with the x0 clipping of the pipeline a run was imported from: dynamic thresholding (Saharia et
    al. 2022, s clamped to [1, sample_max_value] as diffusers does), else clipping to +-clip_sample_range, else none."""
    from ..models.denoiser import Clamped, Thresholded

    if imported.get("thresholding"):
        return Thresholded(model, float(imported.get("dynamic_thresholding_ratio", 0.995)),
                           max_value=float(imported.get("sample_max_value", 1.0)))
    if imported.get("clip_sample", True):  # runs imported before this record clamp as difflab always did
        r = float(imported.get("clip_sample_range", 1.0))
        return Clamped(model, -r, r)
    return model


def scheduler_config(schedule: DiscreteSchedule, prediction: str) -> dict[str, Any]:
    """DDPMScheduler / DDIMScheduler arguments giving the same table and prediction type (trained_betas when no name fits)."""
    c = schedule.config()
    out: dict[str, Any] = {"num_train_timesteps": schedule.T, "prediction_type": PREDICTION_TO_DIFFUSERS[prediction]}
    kind = c["kind"]
    if kind in ("linear", "quadratic"):
        out.update(beta_schedule="linear" if kind == "linear" else "scaled_linear", beta_start=c["beta_start"],
                   beta_end=c["beta_end"])
    elif kind == "cosine" and c.get("s") == 0.008 and c.get("max_beta") == 0.999:
        out.update(beta_schedule="squaredcos_cap_v2")
    else:
        out.update(trained_betas=schedule.betas.tolist())
    return out


# ---- folders -------------------------------------------------------------------------------------------
def _read_index(src: Path) -> dict[str, Any]:
    from ..utils.config import read_json_object

    if not src.is_dir():
        raise UserError(f"{src} is not a folder (a diffusers pipeline folder holds model_index.json, unet/, scheduler/)")
    where = src / "model_index.json"
    index = read_json_object(where, UserError)
    parts = {k: v for k, v in index.items() if not k.startswith("_")}
    for k, v in parts.items():
        if not (isinstance(v, list) and len(v) == 2 and all(e is None or isinstance(e, str) for e in v)):
            raise UserError(f"{where}: {k!r} must name a component as [library, class], got {json.dumps(v)[:60]}")
    extra = sorted(k for k, v in parts.items() if k not in ("unet", "scheduler") and v != [None, None])
    if "unet" not in parts or "scheduler" not in parts or extra:
        raise UserError(f"{where}: difflab reads pipelines made of a unet and a scheduler "
                        f"(DDPMPipeline, DDIMPipeline); this one ({str(index.get('_class_name'))[:40]}) has "
                        f"{', '.join(sorted(parts))[:200]}")
    if parts["unet"] != ["diffusers", "UNet2DModel"]:
        raise UserError(f"{where}: the unet is {parts['unet']}, not diffusers' UNet2DModel")
    if parts["scheduler"][0] != "diffusers" or parts["scheduler"][1] not in SCHEDULERS:
        raise UserError(f"{where}: the scheduler is {parts['scheduler']}; difflab reads the configs of "
                        f"{', '.join(SCHEDULERS)}")
    return index


def _read_scheduler(src: Path, cls_name: str) -> dict[str, Any]:
    """scheduler/scheduler_config.json as plain JSON, of the class model_index.json names, checked."""
    from ..utils.config import read_json_object

    path = src / "scheduler" / "scheduler_config.json"
    cfg = read_json_object(path, UserError, "scheduler config")
    cfg.setdefault("_class_name", cls_name)
    if cfg.get("_class_name", cls_name) != cls_name:
        raise UserError(f"{path}: _class_name {str(cfg.get('_class_name'))[:40]!r} is not the {cls_name} that "
                        "model_index.json names")
    try:
        check_scheduler_config(cfg)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return cfg


def _read_unet_config(src: Path) -> dict[str, Any]:
    """unet/config.json as plain JSON with its sizes bounded (read before diffusers builds anything from it)."""
    from ..training.checkpoint import MAX_SIDE
    from ..utils.config import read_json_object

    path = src / "unet" / "config.json"
    cfg = read_json_object(path, UserError, "unet config")
    size = cfg.get("sample_size", 32)
    sides = size if isinstance(size, list) and len(size) == 2 else [size]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE for v in sides):
        raise UserError(f"{path}: sample_size {json.dumps(size)[:40]} must be an integer in [1, {MAX_SIDE}] or two")
    widths = cfg.get("block_out_channels", [])
    if not (isinstance(widths, list) and 1 <= len(widths) <= 8
            and all(isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= 4096 for w in widths)):
        raise UserError(f"{path}: block_out_channels {json.dumps(widths)[:60]} must be 1 to 8 integers in [1, 4096]")
    for key, top in (("layers_per_block", 16), ("in_channels", 64), ("out_channels", 64)):
        v = cfg.get(key, 1)
        if not (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= top):
            raise UserError(f"{path}: {key} {json.dumps(v)[:40]} must be an integer in [1, {top}]")
    return cfg


def import_pipeline(src: str | Path, out: str | Path, data: str | None = None) -> Path:
    """Write a difflab run folder ``out`` from a DDPMPipeline / DDIMPipeline folder ``src`` (model_index.json, unet/, scheduler/)."""
    from ..training.checkpoint import CONFIG, atomic_folder, save_checkpoint, write_json
    from ..training.run import RUN_FORMAT

    src, out = Path(src), Path(out)
    if (out / CONFIG).exists():
        raise UserError(f"--out {out} already holds a run; choose a new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder; choose a new folder")
    diffusers = require_diffusers()
    index = _read_index(src)
    sched_name = index["scheduler"][1]
    sched_cfg = _read_scheduler(src, sched_name)
    _read_unet_config(src)
    weights = src / "unet" / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        pickles = sorted(p.name for p in (src / "unet").glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
        found = f" ({src / 'unet' / pickles[0]} is pickled and never read)" if pickles else ""
        raise UserError(f"{src / 'unet'} holds no diffusion_pytorch_model.safetensors{found}; difflab loads only "
                        "safetensors and JSON (re-save with save_pretrained(..., safe_serialization=True))")
    try:
        unet = diffusers.UNet2DModel.from_pretrained(str(src / "unet"), use_safetensors=True)
    except (OSError, ValueError, AttributeError, TypeError, KeyError, RuntimeError) as e:
        raise UserError(f"{src}: diffusers could not read the UNet ({str(e).splitlines()[0]})") from None
    ucfg = dict(unet.config)
    if sched_cfg.get("variance_type") in ("learned", "learned_range"):
        raise UserError(f"scheduler variance_type={sched_cfg['variance_type']!r}: learned variances are not imported")
    flow = sched_name == FLOW_SCHEDULER  # velocity noise - x_0 at timestep sigma T: difflab's flow prediction, time T t
    pred = "flow" if flow else PREDICTION_FROM_DIFFUSERS[sched_cfg.get("prediction_type", "epsilon")]  # diffusers'
    # default epsilon, on which configs before 0.8 relied
    time_unit = float(sched_cfg.get("num_train_timesteps", 1000)) if flow else 1.0
    dl_cfg, time = unet_config_from_diffusers(ucfg, unet.state_dict(), time_unit)
    net = UNet(dl_cfg)
    net.load_state_dict(state_dict_from_diffusers(unet.state_dict(), dl_cfg, time))
    model = Denoiser(net, schedule_from_scheduler(sched_cfg), pred).eval()
    size = ucfg.get("sample_size") or 32
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    rc = {"format": RUN_FORMAT, "family": "diffusion", "data": data, "data_kind": "image",
          "shape": [dl_cfg.in_channels, int(h), int(w)],
          "class_names": [str(i) for i in range(dl_cfg.num_classes)] if dl_cfg.num_classes else None,
          "train": {"prediction": model.prediction}, "network": network_spec(net), "schedule": model.schedule.config(),
          "prediction": model.prediction, "denoiser": "plain", "processes": 1,
          "imported": {"from": "diffusers", "path": str(src.resolve()), "pipeline": str(index.get("_class_name")),
                       "scheduler": sched_name, "diffusers_version": diffusers.__version__,
                       **clipping_record(sched_cfg, sched_name)}}
    if data is not None:
        from ..training.checkpoint import data_shape

        known = data_shape(data)
        if known is not None and any(k is not None and k != v for k, v in zip(known, rc["shape"])):
            raise UserError(f"--data {data}: its examples are {'x'.join(str(k) for k in known)}, but the pipeline "
                            f"makes {'x'.join(map(str, rc['shape']))}")

    def write(folder: Path) -> None:
        save_checkpoint(folder, {"model": model}, step=0)
        write_json(folder / CONFIG, rc)

    atomic_folder(out, write)
    return out


def export_problems(config: Mapping[str, Any], net: Any, model: Any) -> list[str]:
    """What in a run does not map onto UNet2DModel + a diffusers DDPM scheduler (empty: it exports)."""
    problems = []
    if config.get("family", "diffusion") != "diffusion":
        return [f"family {config.get('family')!r} (only diffusion runs have a UNet2DModel counterpart)"]
    if not isinstance(net, UNet):
        return [f"network kind {config.get('network', {}).get('kind')!r} (only difflab's U-Net maps onto UNet2DModel)"]
    c = net.config
    for key, off in (("cond_channels", 0), ("context_dim", 0)):
        if getattr(c, key) != off:
            problems.append(f"{key}={getattr(c, key)} (UNet2DModel takes no conditioning image or text context)")
    if c.input_fourier:
        problems.append(f"input_fourier={list(c.input_fourier)} (UNet2DModel has no input Fourier features)")
    widths = [c.channels * m for m in c.channel_mult]
    att = sorted({widths[i] for i in c.attention_levels} | {widths[-1]})
    if len(att) > 1:
        problems.append(f"num_heads={c.num_heads} at attention widths {att} (UNet2DModel fixes the head width, "
                        "difflab the head count: the widths must agree)")
    if config.get("denoiser", "plain") != "plain":
        problems.append(f"denoiser {config.get('denoiser')!r} (learned variances are not exported)")
    problems += _schedule_problems(model, c)
    shape = config.get("shape", [])
    if len(shape) != 3 or any(s % c.multiple for s in shape[1:]):
        problems.append(f"image size {shape[1:]} is not a multiple of {c.multiple} (difflab pads it, UNet2DModel does not)")
    return problems


def is_flow_export(model: Any) -> bool:
    """True when a run maps onto FlowMatchEulerDiscreteScheduler: the flow path with the velocity (flow) prediction."""
    return isinstance(model.schedule, schedules.Flow) and model.prediction == "flow"


def _schedule_problems(model: Any, c: UNetConfig) -> list[str]:
    """What in the (schedule, prediction) pair has no diffusers scheduler: DDPM tables with eps / x0 / v, or the flow
    path with the velocity eps - x_0 (diffusers' flow models predict noise - x_0: the same sign, nothing to convert)."""
    pred, kind = model.prediction, model.schedule.config().get("kind")
    if pred == "edm":
        return ["prediction 'edm' (EDM preconditioning scales the network's input by c_in(sigma) and mixes its output "
                "with x_t by c_skip(sigma); a UNet2DModel takes x_t as it is and diffusers' schedulers read its output "
                "as eps, x0, v or a velocity)"]
    if isinstance(model.schedule, schedules.Flow):
        if pred != "flow":
            return [f"prediction {pred!r} on the flow schedule (FlowMatchEulerDiscreteScheduler reads the output as the "
                    "velocity noise - x_0: train with --prediction flow)"]
        if c.time_embedding != "sinusoidal" or c.time_scale != FLOW_TIMESTEPS:
            return [f"time embedding {c.time_embedding!r} of {c.time_scale:g} t (diffusers' flow models see the "
                    f"positional features of timestep = {FLOW_TIMESTEPS:g} sigma; flow runs trained before difflab fed "
                    f"the network 1000 t use 1000 / t_max, which no UNet2DModel reproduces)"]
        return []
    problems = []
    if pred not in PREDICTION_TO_DIFFUSERS:
        problems.append(f"prediction {pred!r} (diffusers' DDPM schedulers predict epsilon, sample or v_prediction"
                        + ("; a flow velocity exports only with the flow schedule)" if pred == "flow" else ")"))
    if not isinstance(model.schedule, DiscreteSchedule):
        problems.append(f"schedule {kind!r} is continuous-time (diffusers' schedulers are DDPM tables, train with "
                        "--T, or the flow path with the flow prediction)")
    return problems


def diffusers_unet_kwargs(c: UNetConfig, shape: list[int], T: int, positional_scale: float = 1.0
                          ) -> tuple[dict[str, Any], bool]:
    """UNet2DModel arguments equal to difflab's UNetConfig; the flag says whether the time embedding is a learned table.

    difflab's sinusoidal features of s t are diffusers' "positional" ones of timestep = s t (flip_sin_to_cos, freq_shift
    0) when s is ``positional_scale``, diffusers' timestep per unit of difflab time (1 on DDPM tables, T on the flow
    path); any other time embedding is tabulated at the T integer timesteps diffusers' DDPM schedulers use.
    """
    widths = tuple(c.channels * m for m in c.channel_mult)
    levels = range(len(widths))
    table = not (c.time_embedding == "sinusoidal" and c.time_scale == positional_scale)
    kw = dict(sample_size=(shape[1], shape[2]) if shape[1] != shape[2] else shape[1], in_channels=c.in_channels,
              out_channels=c.out_channels, block_out_channels=widths, layers_per_block=c.num_res_blocks,
              down_block_types=tuple("AttnDownBlock2D" if i in c.attention_levels else "DownBlock2D" for i in levels),
              up_block_types=tuple("AttnUpBlock2D" if i in c.attention_levels else "UpBlock2D" for i in reversed(levels)),
              attention_head_dim=widths[-1] // c.num_heads, norm_num_groups=c.groups, dropout=c.dropout,
              resnet_time_scale_shift="scale_shift" if c.time_injection == "adagn" else "default",
              attn_norm_num_groups=c.groups, time_embedding_type="learned" if table else "positional", flip_sin_to_cos=True, freq_shift=0,
              num_train_timesteps=T if table else None,
              num_class_embeds=(c.num_classes + 1) if c.num_classes else None)
    return kw, table


def state_dict_to_diffusers(net: UNet, T: int, table: bool) -> dict[str, Tensor]:
    """UNet2DModel state dict from a difflab UNet (inverse of :func:`state_dict_from_diffusers` for the positional case)."""
    sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
    c = net.config
    out = {df: sd[dl] for dl, df in _names(c) if dl in sd}
    for dl, df, kind in _pairs(c):
        if kind == "attn":
            for p in ("weight", "bias"):
                for name, part in zip("qkv", sd[f"{dl}.qkv.{p}"].chunk(3, dim=0)):
                    out[f"{df}.to_{name}.{p}"] = part.clone()
    if table:  # the embedding's features at t = 0..T-1, as difflab computes them, looked up by diffusers
        with torch.no_grad():
            t = torch.arange(T, dtype=torch.float32)
            out["time_proj.weight"] = net.time_embed.features(t * net.time_embed.time_scale).float()
    if c.num_classes:
        out["class_embedding.weight"] = sd["label_embed.table.weight"]
    return out


def export_run(run: str | Path, out: str | Path, ema: bool = True) -> Path:
    """Write a DDPMPipeline folder ``out`` (model_index.json, unet/, scheduler/) from a difflab run whose network maps
    onto UNet2DModel: a DDPMScheduler for a DDPM table, a FlowMatchEulerDiscreteScheduler (shift 1) for the flow path."""
    from ..training.families import is_family_run
    from ..training.run import load_run

    run, out = Path(run), Path(out)
    if (out / "model_index.json").exists():
        raise UserError(f"--out {out} already holds a diffusers pipeline; choose a new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder; choose a new folder")
    if is_family_run(run):
        raise UserError(f"{run} is not exportable: it is a family run (gan, vae, ddgan); only diffusion runs map onto "
                        "UNet2DModel")
    loaded = load_run(run, ema=ema, device="cpu")
    model, net = loaded.model, loaded.model.net
    problems = export_problems(loaded.config, net, model)
    if problems:
        raise UserError(f"{run} does not map onto diffusers' UNet2DModel: " + "; ".join(problems))
    diffusers = require_diffusers()
    flow = is_flow_export(model)
    T = FLOW_TIMESTEPS if flow else model.schedule.T
    kw, table = diffusers_unet_kwargs(net.config, list(loaded.shape), T, positional_scale=float(T) if flow else 1.0)
    unet = diffusers.UNet2DModel(**kw)
    try:
        unet.load_state_dict(state_dict_to_diffusers(net, T, table))
    except RuntimeError as e:
        raise UserError(f"{run}: the weights did not map onto UNet2DModel ({str(e).splitlines()[0]})") from None
    if flow:  # x_t = (1 - sigma) x_0 + sigma noise, timestep = sigma T, output = noise - x_0 (difflab's flow prediction)
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=1.0)
    else:
        scheduler = diffusers.DDPMScheduler(**scheduler_config(model.schedule, model.prediction))
    pipe = diffusers.DDPMPipeline(unet=unet.eval(), scheduler=scheduler)
    from ..training.checkpoint import atomic_folder

    def write(folder: Path) -> None:
        pipe.save_pretrained(str(folder), safe_serialization=True)
        (folder / "difflab_source.json").write_text(json.dumps({"run": str(run.resolve()), "step": loaded.step,
                                                                "ema": ema, "time_embedding_table": table,
                                                                "schedule": model.schedule.config()}, indent=2))

    atomic_folder(out, write)  # a failed write (a full disk) leaves no half-written pipeline
    return out


__all__ = ["FLOW_SCHEDULER", "FLOW_TIMESTEPS", "is_flow_export", "check_flow_scheduler_config", "SCHEDULERS", "check_scheduler_config", "clipping_record", "clipped_as_imported", "require_diffusers", "import_pipeline", "export_run", "export_problems", "unet_config_from_diffusers",
           "state_dict_from_diffusers", "state_dict_to_diffusers", "diffusers_unet_kwargs", "schedule_from_scheduler",
           "scheduler_config", "diffusers_frequencies", "table_time_scale", "TimeFeatures", "PREDICTION_FROM_DIFFUSERS",
           "PREDICTION_TO_DIFFUSERS", "EXTRA_HINT"]
