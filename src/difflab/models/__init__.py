"""Networks and the denoiser contract."""
from .denoiser import PREDICTIONS, Denoiser, Prediction, eps_from_x0, from_eps, from_score, from_v, from_x0, target_for, x0_from
from .mlp import MLP, MLPConfig, mlp_toy
from .networks import NETWORK_KINDS, build_network, network_kind, network_spec, time_scale_for
from .unet import UNET_PRESETS, UNet, UNetConfig, unet_digits, unet_for_image, unet_mnist

__all__ = ["Denoiser", "Prediction", "PREDICTIONS", "from_eps", "from_x0", "from_v", "from_score", "x0_from",
           "target_for", "eps_from_x0",
           "UNet", "UNetConfig", "unet_digits", "unet_mnist", "unet_for_image", "UNET_PRESETS", "MLP", "MLPConfig",
           "mlp_toy", "build_network", "network_kind", "network_spec", "time_scale_for", "NETWORK_KINDS"]
