"""difflab: denoising diffusion models, from DDPM to latent diffusion, as one library with a command line."""
from . import schedules
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
