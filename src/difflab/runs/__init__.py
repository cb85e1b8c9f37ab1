"""Run folders as objects: ``load(run_dir)`` opens any of them as a :class:`Run` that declares its family,
data domain, conditioning, samplers, tasks and likelihood, and samples in data space."""
from .auxiliary import AuxiliaryRun, CascadeRun
from .base import ConditioningKind, Domain, Run
from .diffusion import DiffusionRun
from .family import FamilyRun
from .load import FORMATS, family_names, load, sampler_names

__all__ = ["load", "Run", "DiffusionRun", "FamilyRun", "AuxiliaryRun", "CascadeRun", "Domain", "ConditioningKind",
           "FORMATS", "family_names", "sampler_names"]
