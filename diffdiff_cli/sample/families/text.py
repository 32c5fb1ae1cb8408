"""Text encoding shared by the family adapters: A1111 weights and 75-token chunks, clip skip, T5.

CLIP prompts of any length are cut into 75-token chunks (diffdiff_cli.prompts), each wrapped as
BOS + tokens + EOS + padding (77 positions, exactly what the tokenizer makes for a short prompt), encoded
on its own, and the chunks are concatenated along the sequence. A prompt without weights or BREAK that fits
one chunk therefore encodes bit for bit as diffusers' own `encode_prompt`. Weights follow A1111: each
token's embedding is multiplied by its weight, then the chunk is rescaled to its original mean. The pooled
vector (SDXL, SD3, Flux) is the first chunk's, unweighted, as in A1111.

T5 (SD3, Flux) reads one sequence of at most `max_length` tokens; the same weights apply to its output, and
tokens beyond the limit are dropped with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from diffdiff_cli.prompts import BREAK, Chunk, Fragment, chunk_tokens, is_plain, parse_weighted


@dataclass
class PromptOptions:
    """What an edit sets about prompt encoding (the same for every prompt of a run)."""

    clip_skip: int | None = None  # A1111's meaning: 1 = last layer, 2 = the one before
    warn: Callable[[str], None] = lambda message: None


@dataclass(frozen=True)
class ClipReader:
    """One CLIP tokenizer + text encoder, and which layer is the prompt embedding."""

    tokenizer: object
    encoder: object
    layer: int  # counted from the end: 1 = the last layer
    final_norm: bool  # apply the encoder's final layer norm to that layer's output (SD 1.x/2.x)


def _converted(pipe, text: str, tokenizer) -> str:
    """Multi-vector textual-inversion tokens spelled out, as diffusers' pipelines do."""
    convert = getattr(pipe, "maybe_convert_prompt", None)
    return convert(text, tokenizer) if convert is not None else text


def _comma_id(tokenizer) -> int | None:
    token_id = tokenizer.convert_tokens_to_ids(",</w>")
    return None if token_id in (None, tokenizer.unk_token_id) else token_id


def clip_chunks(pipe, tokenizer, fragments: list[Fragment]) -> list[Chunk]:
    if is_plain(fragments):  # in one piece, exactly as diffusers tokenizes it
        fragments = [Fragment("".join(f.text for f in fragments))]
    pieces = [
        None if f is BREAK else (tokenizer(_converted(pipe, f.text, tokenizer), add_special_tokens=False).input_ids, f.weight)
        for f in fragments
    ]
    return chunk_tokens(pieces, size=tokenizer.model_max_length - 2, comma=_comma_id(tokenizer))


def emphasised(z: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """A1111's emphasis: scale each token's vector by its weight, then restore the original mean."""
    if all(w == 1.0 for w in weights):
        return z
    original = z.float()
    scaled = original * torch.tensor(weights, device=z.device, dtype=torch.float32)[None, :, None]
    return (scaled * (original.mean() / scaled.mean())).to(z.dtype)


def check_layer(encoder, layer: int) -> None:
    layers = encoder.config.num_hidden_layers
    if not 1 <= layer <= layers:
        from diffdiff_cli.errors import InputError

        raise InputError(f"--clip-skip {layer}: the model's text encoder has {layers} layers; choose 1 to {layers}")


def encode_chunks(reader: ClipReader, chunks: list[Chunk], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 77 x chunks, width) prompt embedding and the first chunk's pooled vector."""
    tokenizer, encoder = reader.tokenizer, reader.encoder
    length = tokenizer.model_max_length
    check_layer(encoder, reader.layer)
    use_mask = getattr(encoder.config, "use_attention_mask", False)
    hidden, pooled = [], None
    for chunk in chunks:
        padding = length - 2 - len(chunk.ids)
        ids = torch.tensor([[tokenizer.bos_token_id, *chunk.ids, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * padding])
        mask = torch.tensor([[1] * (length - padding) + [0] * padding], device=device) if use_mask else None
        out = encoder(ids.to(device), attention_mask=mask, output_hidden_states=True)
        if reader.final_norm and reader.layer == 1:
            z = out.last_hidden_state
        elif reader.final_norm:
            norm = getattr(encoder, "final_layer_norm", None) or encoder.text_model.final_layer_norm
            z = norm(out.hidden_states[-reader.layer])
        else:
            z = out.hidden_states[-reader.layer]
        hidden.append(emphasised(z, [1.0, *chunk.weights, 1.0] + [1.0] * padding))
        if pooled is None:
            pooled = out.text_embeds if getattr(out, "text_embeds", None) is not None else out.pooler_output
    return torch.cat(hidden, dim=1).to(encoder.dtype), pooled


def encode_clip_prompts(pipe, readers: list[ClipReader], prompts: list[str], device) -> list[tuple[torch.Tensor, list]]:
    """Each prompt's embedding (the readers' outputs side by side) and pooled vectors (one per reader).

    All prompts get the same number of chunks (the shorter padded with empty ones, as A1111 does), so a
    negative and a positive prompt can share a classifier-free-guidance batch.
    """
    parsed = [parse_weighted(p) for p in prompts]
    chunked = [[clip_chunks(pipe, r.tokenizer, fragments) for r in readers] for fragments in parsed]
    count = max(len(chunks) for per_prompt in chunked for chunks in per_prompt)
    encoded = []
    for per_prompt in chunked:
        outputs = [
            encode_chunks(reader, chunks + [Chunk() for _ in range(count - len(chunks))], device)
            for reader, chunks in zip(readers, per_prompt)
        ]
        encoded.append((torch.cat([h for h, _ in outputs], dim=-1), [p for _, p in outputs]))
    return encoded


def encode_t5(tokenizer, encoder, prompt: str, max_length: int, device, warn, label: str) -> torch.Tensor:
    """(1, max_length, width): the prompt's T5 embedding with A1111 weights; BREAK reads as a space."""
    fragments = [f for f in parse_weighted(prompt) if f is not BREAK]
    if is_plain(fragments):
        fragments = [Fragment("".join(f.text for f in fragments))]
    ids, weights = [], []
    for f in fragments:
        piece = tokenizer(f.text, add_special_tokens=False).input_ids
        ids += piece
        weights += [f.weight] * len(piece)
    dropped = max(0, len(ids) + 1 - max_length)
    if dropped:
        warn(f"{label}: T5 reads {max_length} tokens; the last {dropped} tokens were dropped")
        ids, weights = ids[: max_length - 1], weights[: max_length - 1]
    padding = max_length - 1 - len(ids)
    tokens = torch.tensor([ids + [tokenizer.eos_token_id] + [tokenizer.pad_token_id] * padding])
    z = encoder(tokens.to(device))[0]
    return emphasised(z, weights + [1.0] * (padding + 1)).to(encoder.dtype)
