"""A small byte-level BPE tokenizer with Qwen's special tokens at their real ids, built offline.

Qwen2.5-VL (Qwen-Image) and Qwen3 (Z-Image, FLUX.2 [klein]) use a 151,643-token byte-level BPE that is
not available offline. The built-in models only need its mechanics: bytes, a few merges so common words
are single tokens, the chat-template markers at the ids the real models use (so a tiny text encoder's
embedding is sized like the real one), and Qwen3's chat template with its `enable_thinking` switch.
"""

from __future__ import annotations

import functools

VOCAB_SIZE = 151936  # the embedding size of Qwen2.5 and Qwen3 checkpoints
ENDOFTEXT = "<|endoftext|>"

# The special tokens of Qwen2.5 from id 151643 on; Qwen3 adds the last four.
SPECIAL_TOKENS = (
    ENDOFTEXT, "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
)
FIRST_SPECIAL_ID = 151643

# Qwen3's template, reduced to what a single user turn needs: with enable_thinking=False the assistant
# turn opens with an empty think block, as the real template writes it.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)

# Words that become single tokens (with and without a leading space): prompt words and template words.
_WORDS = (
    "a an the of on in at with and or to is photo picture painting sky cloud clouds stormy sunny sun night "
    "day red orange yellow green blue purple pink white black gray grey brown circle square triangle "
    "background foreground mountain mountains lake tree trees forest sea water field city dark light make it "
    "autumn winter system user assistant describe image detailing color shape size texture quantity text "
    "spatial relationships objects"
).split()


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each of the 256 bytes, in byte order (the byte-level alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def _train_merges(words) -> list[tuple[str, str]]:
    """Byte-pair merges learnt from the word list (most frequent pair first, ties by the pair itself).

    Training rather than listing merges keeps them consistent: a word always ends as one token.
    """
    pieces = [list(p) for w in words for p in (w, "Ġ" + w)]
    merges: list[tuple[str, str]] = []
    while pieces:
        counts: dict[tuple[str, str], int] = {}
        for piece in pieces:
            for pair in zip(piece, piece[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for n, piece in enumerate(pieces):
            merged, i = [], 0
            while i < len(piece):
                if i + 1 < len(piece) and (piece[i], piece[i + 1]) == best:
                    merged.append(piece[i] + piece[i + 1])
                    i += 2
                else:
                    merged.append(piece[i])
                    i += 1
            pieces[n] = merged
        pieces = [piece for piece in pieces if len(piece) > 1]  # whole words are done
    return merges


@functools.lru_cache(maxsize=1)
def qwen_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    merges = _train_merges(_WORDS)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    for offset, token in enumerate(SPECIAL_TOKENS):
        vocab[token] = FIRST_SPECIAL_ID + offset
    return vocab, merges


def build_qwen_tokenizer(model_max_length: int = 32768):
    """transformers' Qwen2Tokenizer over the synthetic vocabulary, with the chat template set."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = qwen_vocab()
    vocab, merges = dict(vocab), list(merges)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS[1:]]}
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
