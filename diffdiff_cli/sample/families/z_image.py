"""Z-Image: a Qwen3 text encoder, the Flux VAE, a single-stream DiT that takes lists of latents and captions.

What differs from the other flow families sits in `denoise`, as ZImageImg2ImgPipeline writes it: the DiT
is handed (1000 - t) / 1000 and predicts the negated velocity, and guidance g means pos + g (pos - neg)
(so g = 0 turns it off, and Turbo runs unguided).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffdiff_cli.sample.families.base import LatentAdapter


def _padded(embeddings: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length caption embeddings as one (B, L, D) tensor and their lengths (batch on dim 0)."""
    lengths = torch.tensor([e.shape[0] for e in embeddings])
    padded = torch.nn.utils.rnn.pad_sequence(embeddings, batch_first=True)
    return padded, lengths


def _unpadded(padded: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    return [padded[i, : int(n)] for i, n in enumerate(lengths)]


@dataclass
class ZImageConditioning:
    embeds: torch.Tensor  # (B, L, D), padded
    lengths: torch.Tensor  # (B,) caption tokens per item
    negative_embeds: torch.Tensor | None = None
    negative_lengths: torch.Tensor | None = None


class ZImageAdapter(LatentAdapter):
    patch = 2

    @property
    def guided(self) -> bool:
        return self.guidance > 0.0

    def encode_prompt(self, prompt: str, negative_prompt: str | None, size: tuple[int, int]) -> ZImageConditioning:
        positive, negative = self.pipe.encode_prompt(
            prompt, device=self.device, do_classifier_free_guidance=self.guided, negative_prompt=negative_prompt or None
        )
        if not self.guided:
            return ZImageConditioning(*_padded(positive))
        return ZImageConditioning(*_padded(positive), *_padded(negative))

    def stack_conditionings(self, conditionings: list) -> ZImageConditioning:
        """Captions of different lengths stack padded: each keeps its own length, so none reads padding."""
        if len(conditionings) == 1:
            return conditionings[0]

        def joined(embeds, lengths):
            if embeds[0] is None:
                return None, None
            captions = [e for item, n in zip(embeds, lengths) for e in _unpadded(item, n)]
            return _padded(captions)

        positive = joined([c.embeds for c in conditionings], [c.lengths for c in conditionings])
        negative = joined([c.negative_embeds for c in conditionings], [c.negative_lengths for c in conditionings])
        return ZImageConditioning(*positive, *negative)

    def conditioning_signature(self, conditioning) -> tuple:
        return (conditioning.negative_embeds is None,)

    def initial_latent(self, scheduler, x0, noise, first_timestep):
        return scheduler.scale_noise(x0, first_timestep.repeat(x0.shape[0]), noise)

    def denoise(self, latents: torch.Tensor, t, cond: ZImageConditioning) -> torch.Tensor:
        batch = latents.shape[0]
        timestep = (1000 - t.expand(batch)) / 1000
        captions = _unpadded(cond.embeds, cond.lengths)
        model_input = latents.to(self.dtype)
        if self.guided:
            captions += _unpadded(cond.negative_embeds, cond.negative_lengths)
            model_input, timestep = model_input.repeat(2, 1, 1, 1), timestep.repeat(2)
        outputs = self.pipe.transformer(list(model_input.unsqueeze(2).unbind(dim=0)), timestep, captions, return_dict=False)[0]
        if self.guided:
            positive, negative = outputs[:batch], outputs[batch:]
            outputs = [p.float() + self.guidance * (p.float() - n.float()) for p, n in zip(positive, negative)]
        prediction = torch.stack([o.float() for o in outputs], dim=0).squeeze(2)
        return (-prediction).to(torch.float32)
