"""Guidance as denoiser wrappers that work with every sampler: classifier-free (Ho & Salimans 2022), classifier
(Dhariwal & Nichol 2021) and CLIP-style (Nichol et al. 2022) guidance."""
from .base import GuidedDenoiser, cat_conditions, context_dim_of, null_condition, num_classes_of
from .cfg import ClassifierFreeGuidance, classifier_free
from .classifier import (ClassifierConfig, ClassifierGuidance, NoisyClassifier, classifier_guided, log_prob_grad,
                         to_schedule)
from .clip import (ClipConfig, ClipGuidance, ClipTrainConfig, NoisyClip, clip_loss, load_clip, similarity_grad,
                   train_clip, zero_shot_accuracy)
from .training import ClassifierTrainConfig, load_classifier, noisy_accuracy, save_classifier, train_classifier

__all__ = ["GuidedDenoiser", "cat_conditions", "context_dim_of", "null_condition", "num_classes_of",
           "ClassifierFreeGuidance", "classifier_free", "ClassifierConfig", "ClassifierGuidance", "NoisyClassifier",
           "classifier_guided", "log_prob_grad", "to_schedule", "ClassifierTrainConfig", "load_classifier",
           "noisy_accuracy", "save_classifier", "train_classifier", "ClipConfig", "ClipGuidance", "ClipTrainConfig",
           "NoisyClip", "clip_loss", "load_clip", "similarity_grad", "train_clip", "zero_shot_accuracy"]
