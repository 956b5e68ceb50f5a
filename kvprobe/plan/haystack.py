"""Haystack texts: natural prose, RULER's repeated noise, or a user's file.

Each document is text long enough for the requested context; documents differ
by a seeded ordering of the shipped essays, so they are deterministic.
"""

from __future__ import annotations

import random
from pathlib import Path

from kvprobe.infra.errors import UserError
from kvprobe.infra.paths import read_input_text

PROSE_DIR = Path(__file__).resolve().parent / "haystacks" / "prose"
# RULER's "noise" haystack (Hsieh et al., 2024): the same five sentences repeated.
NOISE_TEXT = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def prose_essays() -> list[str]:
    """The shipped essays, original text written for kvprobe (licence: the project's)."""
    essays = [p.read_text(encoding="utf-8").strip() for p in sorted(PROSE_DIR.glob("*.txt"))]
    if not essays:
        raise UserError(f"no prose haystack found in {PROSE_DIR}: reinstall kvprobe")
    return essays


MAX_HAYSTACK_BYTES = 64 << 20  # 1M tokens of text is about 4 MiB; more is a wrong file


def read_user_text(path: str) -> str:
    """A haystack file, whether named by --haystack or by a scenario: the same checks (a regular
    UTF-8 text file of bounded size) either way."""
    fix = "give prose, noise, or a UTF-8 text file"
    text = read_input_text(Path(path).expanduser(), "haystack file", fix, max_bytes=MAX_HAYSTACK_BYTES)
    if "\x00" in text or sum(not (c.isprintable() or c.isspace()) for c in text[:100_000]) > 0.01 * min(
        len(text), 100_000
    ):
        raise UserError(f"haystack file {path} looks binary, not text: give a UTF-8 text file")
    if len(text.split()) < 50:
        raise UserError(f"haystack file {path} has fewer than 50 words: give a longer text")
    return text.strip()


def document_text(kind: str, path: str, doc_index: int, seed: int, min_chars: int) -> str:
    """Text of document `doc_index`, at least `min_chars` long (repeated if needed)."""
    if kind == "noise":
        parts = [NOISE_TEXT.strip()]
    elif kind == "prose":
        parts = prose_essays()
        random.Random(f"{seed}:{doc_index}").shuffle(parts)
    elif kind == "file":
        text = read_user_text(path)
        paragraphs = [p for p in text.split("\n\n") if p.strip()]
        # Rotate the user's text so that documents start at different places.
        start = (doc_index * max(1, len(paragraphs) // 4)) % len(paragraphs)
        parts = paragraphs[start:] + paragraphs[:start]
    else:
        raise UserError(f"unknown haystack {kind!r}: choose prose, noise or a file path")
    joiner = " " if kind == "noise" else "\n\n"
    text = joiner.join(parts)
    body = text
    while len(body) < min_chars:
        body = body + joiner + text
    return body
