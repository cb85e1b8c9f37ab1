"""Training: the recipe config, the loop, EMA and checkpoints."""
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .ema import EMA
from .loop import TrainResult, train
from .run import LoadedRun, build_denoiser, default_device, load_run

__all__ = ["TrainConfig", "train", "TrainResult", "EMA", "load_run", "LoadedRun", "build_denoiser",
           "default_device", "save_checkpoint", "load_checkpoint"]
