"""Bridges to other toolkits (optional extras): diffusers pipeline folders in and out (:mod:`difflab.interop.diffusers`)."""
