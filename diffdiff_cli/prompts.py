"""A1111's prompt syntax: emphasis weights, BREAK, and 75-token chunks (pure: no torch, no tokenizer).

- `(text)` multiplies the weight of `text` by 1.1, `[text]` divides it by 1.1, `(text:1.3)` sets the
  factor to 1.3; groups nest (`((a))` = 1.21). An unclosed `(` or `[` applies to the rest of the prompt; a
  closing bracket with nothing open, or a `:` not followed by `NUMBER)`, is plain text.
- `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are the literal characters.
- `BREAK` (upper case, a word of its own) ends the current 75-token chunk.
- `<lora:NAME:W>` (and `<lyco:...>`, `<hypernet:...>`) tags are left out: LoRAs come from --lora here.
  A1111's prompt editing (`[a:b:0.5]`) and alternation (`[a|b]`) are not run; they read as text
  (`unsupported_syntax` names them so the user is told).

The family adapters tokenize each fragment, cut the tokens into chunks of 75 (`chunk_tokens`), wrap every
chunk in BOS/EOS, encode the chunks one by one and concatenate them along the sequence, then scale each
token's embedding by its weight and restore the chunk's original mean (see sample/families/text.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ROUND, SQUARE = 1.1, 1 / 1.1  # A1111's factors for ( ) and [ ]
CHUNK_TOKENS = 75  # CLIP's 77 positions less BOS and EOS
COMMA_BACKTRACK = 20  # A1111's default: a full chunk is cut after its last comma when that is this close to the end


@dataclass(frozen=True)
class Fragment:
    text: str
    weight: float = 1.0


BREAK = Fragment("BREAK", 0.0)  # compared by identity: the chunk break marker
_NETWORK_TAG = re.compile(r"<(?:lora|lyco|hypernet):[^>]*>")
_EDITING = re.compile(r"(?<!\\)\[[^\[\]()\\]*[:|][^\[\]()\\]*\]")


def unsupported_syntax(prompt: str) -> list[str]:
    """What A1111 would do with this prompt that diffdiff does not, one sentence each."""
    notes = [f"{tag} is A1111's LoRA tag; it is left out of the prompt (load LoRAs with --lora FILE:SCALE)"
             for tag in _NETWORK_TAG.findall(prompt)]
    notes += [f"{found} is A1111's prompt editing or alternation, which diffdiff does not run; it reads as text"
              for found in _EDITING.findall(_NETWORK_TAG.sub("", prompt))]
    return notes


def parse_weighted(prompt: str) -> list[Fragment]:
    """The prompt as (text, weight) fragments and BREAK markers; neighbours of equal weight are merged."""
    prompt = _NETWORK_TAG.sub("", prompt)
    parts: list[Fragment | list] = []  # mutable [text, weight] while groups are open; BREAK as is
    open_round: list[int] = []
    open_square: list[int] = []
    literal: list[str] = []

    def flush() -> None:
        if literal:
            _add_plain("".join(literal), parts)
            literal.clear()

    def scale_from(start: int, factor: float) -> None:
        for part in parts[start:]:
            if part is not BREAK:
                part[1] *= factor

    i = 0
    while i < len(prompt):
        char = prompt[i]
        if char == "\\" and i + 1 < len(prompt) and prompt[i + 1] in "()[]\\":
            flush()
            parts.append([prompt[i + 1], 1.0])  # escaped: literal, never a BREAK
            i += 2
            continue
        if char in "([":
            flush()
            (open_round if char == "(" else open_square).append(len(parts))
        elif char == ")" and open_round:
            flush()
            scale_from(open_round.pop(), ROUND)
        elif char == "]" and open_square:
            flush()
            scale_from(open_square.pop(), SQUARE)
        elif char == ":" and open_round and (explicit := _explicit_weight(prompt, i)) is not None:
            weight, end = explicit
            flush()
            scale_from(open_round.pop(), weight)
            i = end
            continue
        else:
            literal.append(char)
        i += 1
    flush()
    for start in open_round:
        scale_from(start, ROUND)
    for start in open_square:
        scale_from(start, SQUARE)
    return _merged(parts)


def _explicit_weight(prompt: str, colon: int) -> tuple[float, int] | None:
    """`:NUMBER)` at `colon` (spaces allowed around the number): the weight and the index after `)`."""
    end = prompt.find(")", colon)
    if end < 0:
        return None
    number = prompt[colon + 1 : end].strip()
    if not number or any(c not in "+-.0123456789" for c in number):
        return None
    try:
        return float(number), end + 1
    except ValueError:
        return None


def _add_plain(text: str, parts: list) -> None:
    """Plain text, split at each BREAK word (the spaces around it go too)."""
    words = text.split("BREAK")
    pending = words[0]
    for word in words[1:]:
        before_ok = not pending or not (pending[-1].isalnum() or pending[-1] == "_")
        after_ok = not word or not (word[0].isalnum() or word[0] == "_")
        if before_ok and after_ok:
            parts.append([pending.rstrip(), 1.0])
            parts.append(BREAK)
            pending = word.lstrip()
        else:
            pending += "BREAK" + word
    parts.append([pending, 1.0])


def _merged(parts: list) -> list[Fragment]:
    merged: list[Fragment] = []
    for part in parts:
        if part is BREAK:
            merged.append(BREAK)
            continue
        text, weight = part
        if not text:
            continue
        if merged and merged[-1] is not BREAK and merged[-1].weight == weight:
            merged[-1] = Fragment(merged[-1].text + text, weight)
        else:
            merged.append(Fragment(text, weight))
    return merged or [Fragment("", 1.0)]


def is_plain(fragments: list[Fragment]) -> bool:
    """No weights other than 1 and no BREAK: the prompt can be tokenized in one piece, as diffusers does."""
    return all(f is not BREAK and f.weight == 1.0 for f in fragments)


@dataclass
class Chunk:
    ids: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


def chunk_tokens(
    pieces: list[tuple[list[int], float] | None],
    size: int = CHUNK_TOKENS,
    comma: int | None = None,
    backtrack: int = COMMA_BACKTRACK,
) -> list[Chunk]:
    """Cut tokenized fragments ((ids, weight), or None for BREAK) into chunks of at most `size` tokens.

    As A1111: a chunk that fills up is cut after its last comma instead, when that comma is within
    `backtrack` tokens of the end (the words after it move to the next chunk); BREAK closes the chunk in
    progress even when it is empty; there is always at least one chunk.
    """
    chunks: list[Chunk] = []
    current = Chunk()
    last_comma = -1

    def close() -> None:
        nonlocal current, last_comma
        chunks.append(current)
        current, last_comma = Chunk(), -1

    for piece in pieces:
        if piece is None:
            close()
            continue
        ids, weight = piece
        for token in ids:
            if len(current.ids) == size:
                if token != comma and last_comma >= 0 and size - last_comma <= backtrack:
                    cut = last_comma + 1
                    moved = Chunk(current.ids[cut:], current.weights[cut:])
                    current.ids, current.weights = current.ids[:cut], current.weights[:cut]
                    close()
                    current = moved
                if len(current.ids) == size:
                    close()
            if token == comma:
                last_comma = len(current.ids)
            current.ids.append(token)
            current.weights.append(weight)
    if current.ids or not chunks:
        close()
    return chunks
