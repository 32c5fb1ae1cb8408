"""What every family adapter shares: the VAE round trip, devices and dtypes, the scheduler in use, and
how per-image prompt conditionings stack into one batch."""

from __future__ import annotations

import dataclasses

import torch

from diffdiff_cli.sample.families.text import PromptOptions
from diffdiff_cli.sample.noising import noising_for


class LatentAdapter:
    """Base for adapters over a diffusers pipeline with `vae`, `image_processor` and `scheduler`."""

    patch = 1  # engine latent cells per token side; image sides are multiples of latent_factor x patch
    latent_patch = 1  # VAE latent cells per engine cell side (FLUX.2 works on 2x2-patchified latents)
    posterior_mode = False  # encode with the posterior's mode (Kontext, FLUX.2) instead of a seeded sample
    prompt_options = PromptOptions()  # clip skip and where truncation warnings go; an edit sets its own
    # Batching: a guided SD/SDXL/SD3 conditioning holds [negative, positive] along dim 0 (2 branches);
    # the leaves named in `shared_leaves` have no batch dimension (Flux's text/reference position ids).
    shared_leaves: frozenset = frozenset()
    prompt_depends_on_size = False  # SDXL's time ids carry the image size
    evaluation = None  # the plan's Evaluation being run (the engine sets it before each denoiser call)

    def __init__(self, pipe, guidance: float):
        self.pipe = pipe
        self.guidance = guidance
        self.vae_scale_factor = pipe.vae_scale_factor
        self.noising = noising_for(pipe.scheduler)

    @property
    def latent_factor(self) -> int:
        """Image pixels per engine latent cell side: the grid the map is resampled to."""
        return self.vae_scale_factor * self.latent_patch

    @property
    def pixel_multiple(self) -> int:
        return self.latent_factor * self.patch

    @property
    def device(self) -> torch.device:
        return self.pipe._execution_device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    @property
    def denoiser(self):
        return self.pipe.unet if getattr(self.pipe, "unet", None) is not None else self.pipe.transformer

    @property
    def branches(self) -> int:
        """Rows per image in the conditioning: 2 when negative and positive share one tensor."""
        return 2 if getattr(self, "guided", False) and self.cfg_in_batch else 1

    cfg_in_batch = False  # SD, SDXL, SD3: classifier-free guidance as one denoiser call on a doubled batch

    def stack_conditionings(self, conditionings: list):
        """One conditioning for a batch of images, each image's own prompt in its place (see `stack_tree`)."""
        if len(conditionings) == 1:
            return conditionings[0]
        return stack_tree(conditionings, self.branches, self.shared_leaves)

    def conditioning_signature(self, conditioning) -> tuple:
        """What must agree for conditionings to stack: every batched leaf's shape past dim 0."""
        return tree_signature(conditioning, self.shared_leaves)

    def use_scheduler(self, scheduler) -> None:
        self.pipe.scheduler = scheduler
        self.noising = noising_for(scheduler)

    def preprocess(self, image) -> torch.Tensor:
        """PIL image whose sides are multiples of pixel_multiple -> (1, 3, H, W) in [-1, 1]."""
        return self.pipe.image_processor.preprocess(image)

    # Latent normalisation, written as diffusers writes it (so results match bit for bit):
    # SD/SDXL scale (or per-channel mean/std), SD3/Flux shift then scale.
    def _latent_stats(self, latents: torch.Tensor):
        """(offset, per-channel std or None, scaling factor) of the VAE's latent space."""
        config = self.pipe.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            as_tensor = lambda values: torch.tensor(values).view(1, -1, 1, 1).to(latents)  # noqa: E731
            return as_tensor(mean), as_tensor(std), config.scaling_factor
        return getattr(config, "shift_factor", None) or 0.0, None, config.scaling_factor

    def _to_model_latents(self, latents: torch.Tensor) -> torch.Tensor:
        offset, std, scale = self._latent_stats(latents)
        return (latents - offset) * scale if std is None else (latents - offset) * scale / std

    def _to_vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        offset, std, scale = self._latent_stats(latents)
        return latents / scale + offset if std is None else latents * std / scale + offset

    def encode_image(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The clean latent x0; the posterior is sampled with the run's generator first, as diffusers does."""
        vae = self.pipe.vae
        posterior = vae.encode(pixels.to(device=self.device, dtype=vae.dtype)).latent_dist
        latents = posterior.mode() if self.posterior_mode else posterior.sample(generator)
        return self._to_model_latents(latents).to(self.dtype)

    def with_reference(self, conditioning, x0: torch.Tensor):
        """Conditioning that also carries the input image, for models that attend to it (Kontext, FLUX.2).

        Called once per run with the clean latent; the default adds nothing.
        """
        return conditioning

    def decode(self, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Back to pixels in [-1, 1] (unclamped), (B, 3, H, W)."""
        vae = self.pipe.vae
        return vae.decode(self._to_vae_latents(latents).to(vae.dtype), return_dict=False)[0]

    def initial_latent(self, scheduler, x0, noise, first_timestep):
        return scheduler.add_noise(x0, noise, first_timestep.repeat(x0.shape[0]))


def classifier_free_guidance(prediction: torch.Tensor, scale: float) -> torch.Tensor:
    unconditional, conditional = prediction.chunk(2)
    return unconditional + scale * (conditional - unconditional)


def _children(node):
    """(name, child) pairs of a conditioning node: tuple positions or dataclass fields; None for a leaf."""
    if isinstance(node, tuple):
        return list(enumerate(node))
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return [(f.name, getattr(node, f.name)) for f in dataclasses.fields(node)]
    return None


def _rebuild(node, values: dict):
    if isinstance(node, tuple):
        return tuple(values[i] for i in range(len(node)))
    return dataclasses.replace(node, **values)


def stack_tree(items: list, branches: int, shared: frozenset = frozenset()):
    """Stack per-image conditionings (tensors, tuples and dataclasses of them, None) along dim 0.

    Each batched tensor leaf holds `branches` rows per image (guided SD: [negative, positive]); the stack is
    branch-major, [negative_1 .. negative_B, positive_1 .. positive_B], to match the engine's doubled batch
    `cat([latents] * 2)` and `prediction.chunk(2)`. Leaves named in `shared` are the same for all and kept.
    """
    first = items[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        parts = [item.chunk(branches) for item in items]
        return torch.cat([part[b] for b in range(branches) for part in parts])
    children = _children(first)
    if children is None:  # a plain value (a number, a string): the same for every image
        return first
    values = {}
    for name, child in children:
        if name in shared:
            values[name] = child
        else:
            per_item = [dict(_children(item))[name] for item in items]
            values[name] = stack_tree(per_item, branches, shared)
    return _rebuild(first, values)


def tree_signature(node, shared: frozenset = frozenset()) -> tuple:
    if node is None:
        return (None,)
    if isinstance(node, torch.Tensor):
        return (tuple(node.shape[1:]), node.dtype)
    children = _children(node)
    if children is None:
        return (node,)
    return tuple((name, tree_signature(child) if name not in shared else ("shared",)) for name, child in children)
