"""diffdiff: edit images with a per-pixel change map (Differential Diffusion) on diffusers models."""

__version__ = "0.1.0"
