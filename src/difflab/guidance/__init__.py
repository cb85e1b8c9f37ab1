"""Guidance as denoiser wrappers that work with every sampler: classifier-free (Ho & Salimans 2022), classifier
(Dhariwal & Nichol 2021) and CLIP-style (Nichol et al. 2022) guidance.

Only the sampling-time wrappers live here: the networks are in :mod:`difflab.models` (classifier, clip) and their
trainers in :mod:`difflab.training` (classifier, clip).
"""
from .base import GuidedDenoiser, cat_conditions, context_dim_of, null_condition, num_classes_of
from .cfg import ClassifierFreeGuidance, classifier_free
from .classifier import ClassifierGuidance, classifier_guided, log_prob_grad, to_schedule
from .clip import ClipGuidance, similarity_grad
from .spec import GuidanceSpec, wrap

__all__ = ["GuidedDenoiser", "cat_conditions", "context_dim_of", "null_condition", "num_classes_of",
           "ClassifierFreeGuidance", "classifier_free", "ClassifierGuidance", "classifier_guided", "log_prob_grad",
           "to_schedule", "ClipGuidance", "similarity_grad", "GuidanceSpec", "wrap"]
