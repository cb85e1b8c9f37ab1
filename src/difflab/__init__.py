"""difflab: denoising diffusion models, from DDPM to latent diffusion, as one library with a command line."""
import os

# OpenMP threads that busy-wait make multi-threaded CPU training tens of times slower as soon as another process
# shares the cores (measured: 0.07 against 4.3 steps/s); passive waiting avoids that. Only takes effect when torch
# is imported after difflab; a value the user has set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import schedules  # noqa: E402
from .models.denoiser import Denoiser, from_eps, from_score, from_v, from_x0
from . import likelihood
from .likelihood import log_likelihood
from . import samplers
from .samplers import sample
from . import guidance
from .guidance import ClassifierFreeGuidance, ClassifierGuidance, ClipGuidance

__version__ = "0.1.0"

__all__ = ["schedules", "Denoiser", "from_eps", "from_x0", "from_v", "from_score", "likelihood", "log_likelihood", "samplers", "sample",
           "guidance", "ClassifierFreeGuidance", "ClassifierGuidance", "ClipGuidance", "__version__"]
