"""Networks and the denoiser contract."""
from .denoiser import PREDICTIONS, Denoiser, Prediction, eps_from_x0, from_eps, from_score, from_v, from_x0, target_for, x0_from

__all__ = ["Denoiser", "Prediction", "PREDICTIONS", "from_eps", "from_x0", "from_v", "from_score", "x0_from",
           "target_for", "eps_from_x0"]
