"""A1111 prompt syntax: the pure parser and chunker, then what the adapters make of it on tiny models."""

from __future__ import annotations

import pytest
import torch

from diffdiff_cli.prompts import BREAK, ROUND, SQUARE, chunk_tokens, parse_weighted, unsupported_syntax
from diffdiff_cli.sample.families import adapter_for
from diffdiff_cli.sample.families.text import PromptOptions

# --- the parser ---------------------------------------------------------------------------------------


def weights(prompt: str) -> list[tuple[str, float]]:
    return [("BREAK", None) if f is BREAK else (f.text, f.weight) for f in parse_weighted(prompt)]


def test_plain_text_is_one_fragment_at_weight_one():
    assert weights("a red circle, on blue") == [("a red circle, on blue", 1.0)]
    assert weights("") == [("", 1.0)]


def test_brackets_and_explicit_weights():
    assert weights("a (red) circle") == [("a ", 1.0), ("red", ROUND), (" circle", 1.0)]
    assert weights("a [red] circle") == [("a ", 1.0), ("red", SQUARE), (" circle", 1.0)]
    assert weights("(red:1.5) circle") == [("red", 1.5), (" circle", 1.0)]
    assert weights("( red : 0.25 )") == [(" red ", 0.25)]
    assert weights("((red))") == [("red", ROUND * ROUND)]
    assert weights("((red:1.5))") == [("red", 1.5 * ROUND)]


def test_nesting_multiplies_and_mixed_groups_close_by_kind():
    # `:1.5)` closes the open round group (taking the square one's start with it); `]` then closes the square
    assert weights("a (b [c:1.5) d] e") == [("a ", 1.0), ("b ", 1.5), ("c", 1.5 * SQUARE), (" d", SQUARE), (" e", 1.0)]


def test_escapes_are_literal_and_stray_brackets_are_text():
    assert weights(r"a \(b\) \[c\]") == [("a (b) [c]", 1.0)]
    assert weights("a) b] c:1.2) d") == [("a) b] c:1.2) d", 1.0)]
    assert weights("(a: not a number)") == [("a: not a number", ROUND)]


def test_unclosed_groups_reach_the_end():
    assert weights("a (b [c") == [("a ", 1.0), ("b ", ROUND), ("c", ROUND * SQUARE)]


def test_equal_weights_merge_and_weight_one_is_plain():
    assert weights("(red:1.0) circle") == [("red circle", 1.0)]
    assert weights("(a)(b)") == [("ab", ROUND)]


def test_break_is_a_word_of_its_own():
    assert weights("a red circle BREAK a blue square") == [("a red circle", 1.0), ("BREAK", None), ("a blue square", 1.0)]
    assert weights("BREAKFAST at noon") == [("BREAKFAST at noon", 1.0)]
    assert weights("(a BREAK b)") == [("a", ROUND), ("BREAK", None), ("b", ROUND)]


def test_a1111_features_not_run_are_named_and_lora_tags_left_out():
    assert weights("a <lora:detail:0.8> cat") == [("a  cat", 1.0)]
    notes = unsupported_syntax("a <lora:detail:0.8> [dog:cat:0.5] [a|b] (x:1.2) [dim]")
    assert len(notes) == 3 and "--lora" in notes[0] and "[dog:cat:0.5]" in notes[1] and "[a|b]" in notes[2]
    assert unsupported_syntax(r"(red:1.3) [dim] a \(b\) \[c:d\]") == []


# --- chunking ----------------------------------------------------------------------------------------


def test_chunks_of_75_and_break():
    chunks = chunk_tokens([(list(range(150)), 1.0)])
    assert [len(c.ids) for c in chunks] == [75, 75] and chunks[1].ids[0] == 75
    assert [len(c.ids) for c in chunk_tokens([(list(range(75)), 1.0)])] == [75]
    assert [len(c.ids) for c in chunk_tokens([([1, 2], 1.0), None, ([3], 2.0)])] == [2, 1]
    assert [len(c.ids) for c in chunk_tokens([None, ([1], 1.0)])] == [0, 1]  # BREAK first: an empty chunk
    assert [c.ids for c in chunk_tokens([])] == [[]]


def test_full_chunk_is_cut_after_a_near_comma():
    comma = 999
    near = list(range(70)) + [comma] + list(range(100, 110))  # comma at 70: 5 from the end
    chunks = chunk_tokens([(near, 1.3)], comma=comma)
    assert [len(c.ids) for c in chunks] == [71, 10] and chunks[0].ids[-1] == comma
    far = list(range(30)) + [comma] + list(range(100, 150))  # comma at 30: too far back
    assert [len(c.ids) for c in chunk_tokens([(far, 1.0)], comma=comma)] == [75, 6]
    assert chunks[1].weights == [1.3] * 10


# --- on tiny models ----------------------------------------------------------------------------------

_models: dict = {}


@pytest.fixture
def models(tiny_model):
    """Tiny models, loaded once per module (tiny-sd15 is the session's)."""
    _models.setdefault("tiny-sd15", tiny_model)
    return _models


def adapter(name: str, guidance: float = 5.0, clip_skip: int | None = None, warn=None):
    from diffdiff_cli.models.load import load_model
    from diffdiff_cli.models.registry import resolve_model

    if name not in _models:
        _models[name] = load_model(resolve_model(name), offline=True)
    model = _models[name]
    made = adapter_for(model.family.name, model.pipe, guidance)
    made.prompt_options = PromptOptions(clip_skip=clip_skip, warn=warn or (lambda message: None))
    return made


def positive(name: str, prompt: str, **options) -> torch.Tensor:
    with torch.inference_mode():
        return adapter(name, guidance=0.0, **options).encode_prompt(prompt, "", (64, 64))


WORDS = "red green blue yellow circle".split()
LONG = " ".join(WORDS[i % 5] for i in range(150))  # 150 tokens, one per word


def test_weights_change_the_embedding_a1111s_way(models):
    pipe = adapter("tiny-sd15").pipe
    assert not torch.equal(positive("tiny-sd15", "a (red:1.5) circle"), positive("tiny-sd15", "a red circle"))
    assert torch.equal(positive("tiny-sd15", "a (red:1.0) circle"), positive("tiny-sd15", "a red circle"))
    ids = pipe.tokenizer("a red circle", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.inference_mode():
        z = pipe.text_encoder(ids)[0]
    factor = torch.ones(77)
    factor[2] = 1.5  # BOS, a, red, ...
    expected = z * factor[None, :, None]
    expected = expected * (z.mean() / expected.mean())
    torch.testing.assert_close(positive("tiny-sd15", "a (red:1.5) circle"), expected, rtol=0, atol=1e-6)


def test_a_150_token_prompt_is_two_whole_chunks(models):
    long = positive("tiny-sd15", LONG)
    assert long.shape[1] == 154
    first, second = " ".join(LONG.split()[:75]), " ".join(LONG.split()[75:])
    assert torch.equal(long[:, :77], positive("tiny-sd15", first))
    assert torch.equal(long[:, 77:], positive("tiny-sd15", second))


def test_negative_prompt_is_padded_to_the_positive_length(models):
    with torch.inference_mode():
        both = adapter("tiny-sd15", guidance=7.5).encode_prompt(LONG, "blurry", (64, 64))
    assert both.shape[:2] == (2, 154)
    assert torch.equal(both[:1, :77], positive("tiny-sd15", "blurry"))
    assert torch.equal(both[:1, 77:], positive("tiny-sd15", ""))  # an empty chunk, as A1111 pads


def test_clip_skip_2_is_the_penultimate_layer_with_the_final_norm(models):
    pipe = adapter("tiny-sd15").pipe
    ids = pipe.tokenizer("a red circle", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.inference_mode():
        hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states
        expected = pipe.text_encoder.final_layer_norm(hidden[-2])
    skipped = positive("tiny-sd15", "a red circle", clip_skip=2)
    torch.testing.assert_close(skipped, expected, rtol=0, atol=0)
    assert torch.equal(positive("tiny-sd15", "a red circle", clip_skip=1), positive("tiny-sd15", "a red circle"))


def test_sdxl_clip_skip_counts_from_the_end_of_both_encoders(models):
    pipe = adapter("tiny-sdxl").pipe
    xl = lambda prompt, **options: positive("tiny-sdxl", prompt, **options)[0].embeddings  # noqa: E731
    assert torch.equal(xl("a red circle", clip_skip=2), xl("a red circle"))
    layers = []
    with torch.inference_mode():
        for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
            ids = tokenizer("a red circle", padding="max_length", max_length=77, return_tensors="pt").input_ids
            layers.append(encoder(ids, output_hidden_states=True).hidden_states[-1])
    torch.testing.assert_close(xl("a red circle", clip_skip=1), torch.cat(layers, -1), rtol=0, atol=0)
    assert xl(LONG).shape[1] == 154


def test_t5_takes_weights_and_warns_when_it_truncates(models):
    embeds = lambda prompt: positive("tiny-flux", prompt)[0]  # noqa: E731
    assert not torch.equal(embeds("a (red:1.5) circle"), embeds("a red circle"))
    assert torch.equal(embeds("a (red:1.0) circle"), embeds("a red circle"))
    warnings: list[str] = []
    with torch.inference_mode():
        adapter("tiny-sd3", guidance=0.0, warn=warnings.append).encode_prompt("red " * 300, "", (64, 64))
    assert warnings == ["prompt: T5 reads 256 tokens; the last 45 tokens were dropped"]
