"""SD3 / 3.5: CLIP x2 + T5 (optional), an MMDiT over 2x2 patches of 16-channel latents, flow matching."""

from __future__ import annotations

import torch

from diffdiff_cli.sample.families.base import LatentAdapter, classifier_free_guidance
from diffdiff_cli.sample.families.text import ClipReader, encode_clip_prompts, encode_t5

T5_TOKENS = 256  # diffusers' max_sequence_length for SD3


class StableDiffusion3Adapter(LatentAdapter):
    cfg_in_batch = True

    @property
    def patch(self) -> int:
        return self.pipe.transformer.config.patch_size

    @property
    def guided(self) -> bool:
        return self.guidance > 1.0

    def encode_prompt(self, prompt: str, negative_prompt: str | None, size: tuple[int, int]):
        pipe, options = self.pipe, self.prompt_options
        # both CLIPs' penultimate layer without the final norm (clip skip 2), as diffusers reads them
        readers = [
            ClipReader(pipe.tokenizer, pipe.text_encoder, options.clip_skip or 2, final_norm=False),
            ClipReader(pipe.tokenizer_2, pipe.text_encoder_2, options.clip_skip or 2, final_norm=False),
        ]
        prompts = [negative_prompt or "", prompt] if self.guided else [prompt]
        embeds, pooled = [], []
        for index, (clip, pooled_parts) in enumerate(encode_clip_prompts(pipe, readers, prompts, self.device)):
            if pipe.text_encoder_3 is None:
                t5 = torch.zeros(1, T5_TOKENS, pipe.transformer.config.joint_attention_dim, device=self.device, dtype=clip.dtype)
            else:
                label = "negative prompt" if self.guided and index == 0 else "prompt"
                t5 = encode_t5(pipe.tokenizer_3, pipe.text_encoder_3, prompts[index], T5_TOKENS, self.device, options.warn, label)
                t5 = t5.to(clip.dtype)  # a bf16 T5 (--dtype auto) feeds an fp16 transformer
            clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
            embeds.append(torch.cat([clip, t5], dim=-2))
            pooled.append(torch.cat(pooled_parts, dim=-1))
        return torch.cat(embeds), torch.cat(pooled)

    def initial_latent(self, scheduler, x0, noise, first_timestep):
        return scheduler.scale_noise(x0, first_timestep.repeat(x0.shape[0]), noise)

    def denoise(self, latents: torch.Tensor, t, conditioning) -> torch.Tensor:
        embeds, pooled = conditioning
        model_input = torch.cat([latents] * 2) if self.guided else latents
        prediction = self.pipe.transformer(
            hidden_states=model_input,
            timestep=t.expand(model_input.shape[0]),
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        return classifier_free_guidance(prediction, self.guidance) if self.guided else prediction
