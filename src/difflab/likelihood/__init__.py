"""Likelihoods and bounds: the variational bound (discrete and continuous time), learned and analytic reverse
variances, Variational Diffusion Models, and exact log-likelihoods through the probability-flow ODE.

The training objectives built on them (``hybrid``, ``vlb``, ``vdm``, ``vdm_T``) are named in
:data:`difflab.training.objectives.OBJECTIVES`.
"""
from .bound import (BoundTerms, ddpm_bound, ddpm_prior, ddpm_step_terms, log_snr_and_derivative, step_terms_from, prior_kl,
                    reconstruction_nll, reverse_step, vdm_bound, vdm_diffusion_loss)
from .evaluate import elbo_terms, evaluate_nll, format_nll, log_likelihood
from .gaussian import (bits_per_dim, discretized_gaussian_log_likelihood, gaussian_log_likelihood, normal_kl,
                       sum_except_batch)
from .objectives import HYBRID_LAMBDA, hybrid_loss, importance_t
from .ode import ode_log_likelihood
from .vdm import VDM_T, FourierInput, fourier_features, vdm_loss
from .variance import (LearnedVarianceDenoiser, analytic_dpm_gamma, analytic_sampler_variance, analytic_variances,
                       learned_log_variance, learned_sampler_variance,
                       reverse_log_variance, split_output, step_log_variances)

__all__ = ["log_likelihood", "evaluate_nll", "format_nll", "elbo_terms", "ode_log_likelihood", "BoundTerms", "ddpm_bound", "ddpm_prior", "ddpm_step_terms", "log_snr_and_derivative", "prior_kl",
           "reconstruction_nll", "reverse_step", "vdm_bound", "vdm_diffusion_loss", "bits_per_dim",
           "discretized_gaussian_log_likelihood", "gaussian_log_likelihood", "normal_kl", "sum_except_batch",
           "LearnedVarianceDenoiser", "analytic_dpm_gamma", "analytic_sampler_variance", "learned_sampler_variance", "analytic_variances", "learned_log_variance",
           "reverse_log_variance", "split_output", "step_log_variances", "step_terms_from", "HYBRID_LAMBDA", "hybrid_loss", "importance_t", "VDM_T", "FourierInput", "fourier_features", "vdm_loss"]
