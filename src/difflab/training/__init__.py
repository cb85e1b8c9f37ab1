"""Training: recipes, the engine every model family plugs into, the diffusion family, checkpoints and runs."""
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .conditioning import Conditioning, conditioning_for, conditioning_of_run
from .config import FitConfig, NetworkConfig, ScheduleConfig, TrainConfig
from .diffusion import DiffusionFamily, train
from .distributed import World, default_device
from .ema import EMA
from .engine import Batch, Family, FitResult, OptimizerSpec, Phase, fit
from .objectives import OBJECTIVES
from .run import LoadedRun, build_denoiser, load_run

TrainResult = FitResult

__all__ = ["TrainConfig", "FitConfig", "ScheduleConfig", "NetworkConfig", "train", "fit", "Family", "Phase",
           "OptimizerSpec", "Batch", "FitResult", "TrainResult", "DiffusionFamily", "EMA", "World", "load_run",
           "LoadedRun", "build_denoiser", "default_device", "save_checkpoint", "load_checkpoint", "Checkpoint",
           "Conditioning", "conditioning_for", "conditioning_of_run", "OBJECTIVES"]
