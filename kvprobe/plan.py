"""The one-pass needle plan: documents with needles at known token positions.

Pure functions of a tokenizer and a seed. A document is a token list; each
needle is planted at a sentence boundary so the text stays natural, and its
exact token position is recorded. Items are (needle, checkpoint) pairs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from kvprobe.errors import UserError
from kvprobe.haystack import document_text
from kvprobe.scenario import Scenario

# Keys are person names: distinctive tokens let a small model tell needles apart
# (hyphenated word pairs were confused with each other by the 270M default model).
FIRST_NAMES = (
    "Alice Bruno Clara Dmitri Elena Farid Greta Hector Irene Jonas Keiko Lars Mona Nadia "
    "Oskar Priya Quentin Rosa Stefan Tamsin Ulrich Vera Walter Xenia Yusuf Zora Anton "
    "Beatrix Cyril Delphine Emil Fiona Gustav Helga Ivan Juno Konrad Lucia Milan Odile"
).split()
LAST_NAMES = (
    "Abbott Brennan Castillo Dawson Eriksen Fontaine Gallagher Hartmann Iqbal Jansen "
    "Kowalski Lindqvist Moreau Novak Okafor Petrov Quinlan Romero Sato Thornton Underwood "
    "Varga Whitfield Yamada Zeller Albrecht Bianchi Carver Dunmore Esposito Falk Grieve "
    "Holm Ingram Jarvis Kessler Lachance Marsh Nyberg Ortega"
).split()


class Tokenizer(Protocol):
    def tokenize(self, text: str) -> list[int]: ...

    def piece(self, token: int) -> str: ...

    @property
    def bos(self) -> int | None: ...


@dataclass(frozen=True)
class Needle:
    doc: int
    key: str
    value: str
    position: int  # token index of the needle's first token in the document
    n_tokens: int

    @property
    def end(self) -> int:
        return self.position + self.n_tokens


@dataclass(frozen=True)
class Document:
    index: int
    tokens: list[int]
    needles: list[Needle]


@dataclass(frozen=True)
class NeedleItem:
    """One query: a needle asked about at a checkpoint (the document cut at `ctx`)."""

    doc: int
    ctx: int
    key: str
    expected: str
    position: int
    depth: float  # position / ctx
    distance: int  # tokens between the needle's end and the query


def default_checkpoints(ctx: int, explicit: list[int] | None = None) -> list[int]:
    """1024, 2048, 4096, ... below ctx, then ctx itself (or the scenario's list, capped)."""
    if explicit:
        points = sorted({c for c in explicit if c < ctx} | {ctx})
        return points
    points = []
    length = 1024
    while length < ctx:
        points.append(length)
        length *= 2
    points.append(ctx)
    return points


def key_capacity(attributes: list[str] | None) -> int:
    """How many distinct keys the name lists and attributes can make."""
    return len(FIRST_NAMES) * len(LAST_NAMES) * max(1, len(set(attributes or [])))


def value_capacity(digits: int) -> int:
    return int(9 * 10 ** (digits - 1))


def check_needle_capacity(n: int, digits: int, attributes: list[str] | None) -> None:
    """A plan that needs more distinct keys or values than exist is refused, not looped on."""
    if n > key_capacity(attributes):
        raise UserError(
            f"the plan needs {n:,} distinct needle keys, but the names and needle.attributes make only "
            f"{key_capacity(attributes):,}: lower needle.per_segment or plan.documents, or add attributes"
        )
    if n > value_capacity(digits) // 2:
        raise UserError(
            f"the plan needs {n:,} distinct needle values, too many for needle.value_digits = {digits} "
            f"({value_capacity(digits):,} values): raise value_digits or lower needle.per_segment"
        )


def check_plan_capacity(scenario: Scenario, ctx: int, mode: str) -> None:
    """The needle capacity check for a whole run, before any model is loaded."""
    if "needle" not in scenario.probes:
        return
    checkpoints = default_checkpoints(ctx, scenario.plan.checkpoints)
    if mode == "classic":
        n = len(checkpoints) * len(scenario.classic.depths) * scenario.classic.repeats
    else:
        n = scenario.needle.per_segment * len(checkpoints)
    check_needle_capacity(n, scenario.needle.value_digits, scenario.needle.attributes)


def draw_keys_values(
    n: int, digits: int, rng: random.Random, attributes: list[str] | None = None
) -> list[tuple[str, str]]:
    """`n` distinct keys ("Vera Holm's locker number": no first name, last name or
    attribute repeated while the lists last) and distinct values that share no
    leading three digits while there are prefixes left."""
    check_needle_capacity(n, digits, attributes)
    firsts: list[str] = []
    lasts: list[str] = []
    attrs: list[str] = []
    while len(firsts) < n:
        firsts += rng.sample(FIRST_NAMES, len(FIRST_NAMES))
        lasts += rng.sample(LAST_NAMES, len(LAST_NAMES))
    while attributes and len(attrs) < n:
        attrs += rng.sample(attributes, len(attributes))

    def key_of(first: str, last: str, attr: str | None) -> str:
        return f"{first} {last}'s {attr}" if attr else f"{first} {last}"

    keys = [key_of(firsts[i], lasts[i], attrs[i] if attributes else None) for i in range(n)]
    # Once the shuffled lists wrap around, a combination can come back: pairing by key would
    # then merge two needles. Redraw each repeat (plans without repeats are unchanged).
    seen: set[str] = set()
    for i in range(n):
        while keys[i] in seen:
            keys[i] = key_of(
                rng.choice(FIRST_NAMES),
                rng.choice(LAST_NAMES),
                rng.choice(attributes) if attributes else None,
            )
        seen.add(keys[i])
    values: list[str] = []
    taken: set[str] = set()
    prefixes: set[str] = set()
    low, high = 10 ** (digits - 1), 10**digits - 1
    while len(values) < n:
        value = str(rng.randint(low, high))
        if value in taken or (value[:3] in prefixes and len(prefixes) < 900):
            continue
        prefixes.add(value[:3])
        taken.add(value)
        values.append(value)
    return list(zip(keys, values, strict=True))


def _is_sentence_end(piece: str) -> bool:
    return piece.rstrip().endswith((".", "!", "?")) and not piece.endswith("\n")


def needle_targets(checkpoints: list[int], per_segment: int, margin: int, rng: random.Random) -> list[int]:
    """Target positions: `per_segment` needles spread across each checkpoint segment.

    Every checkpoint then sees needles at shallow, middle and deep depths.
    """
    targets = []
    start = 0
    for end in checkpoints:
        usable = end - margin - start
        if usable > per_segment:
            step = usable / per_segment
            for i in range(per_segment):
                jitter = rng.uniform(-0.3, 0.3) * step
                targets.append(int(start + (i + 0.5) * step + jitter))
        start = end
    return sorted(targets)


def build_document(
    tok: Tokenizer,
    *,
    scenario: Scenario,
    doc_index: int,
    length: int,
    checkpoints: list[int],
    keys_values: list[tuple[str, str]],
    seed: int,
) -> Document:
    """Plant needles into filler tokens; returns exactly `length` tokens."""
    rng = random.Random(f"{seed}:targets:{doc_index}")
    needle_tokens = [
        tok.tokenize(" " + scenario.needle.template.format(key=k, value=v)) for k, v in keys_values
    ]
    if not keys_values:
        return _plant(
            tok,
            scenario=scenario,
            doc_index=doc_index,
            length=length,
            keys_values=[],
            needle_tokens=[],
            targets=[],
            seed=seed,
        )
    longest = max(len(t) for t in needle_tokens)
    targets = needle_targets(checkpoints, scenario.needle.per_segment, margin=longest + 48, rng=rng)
    targets = targets[: len(keys_values)]
    return _plant(
        tok,
        scenario=scenario,
        doc_index=doc_index,
        length=length,
        keys_values=keys_values,
        needle_tokens=needle_tokens,
        targets=targets,
        seed=seed,
    )


def _plant(
    tok: Tokenizer,
    *,
    scenario: Scenario,
    doc_index: int,
    length: int,
    keys_values: list[tuple[str, str]],
    needle_tokens: list[list[int]],
    targets: list[int],
    seed: int,
) -> Document:
    """Copy filler tokens, inserting each needle at the first sentence end after its target."""
    # ~3.5 characters per token for English; ask for plenty and cut.
    text = document_text(
        scenario.haystack.kind, scenario.haystack.path, doc_index, seed, min_chars=length * 6
    )
    filler = tok.tokenize(text)
    out: list[int] = [tok.bos] if tok.bos is not None else []
    needles: list[Needle] = []
    src = 0
    for (key, value), ntoks, target in zip(keys_values, needle_tokens, targets, strict=False):
        while src < len(filler) and (len(out) < target or not _is_sentence_end(tok.piece(out[-1]))):
            out.append(filler[src])
            src += 1
        if len(out) + len(ntoks) > length:
            break
        needles.append(Needle(doc_index, key, value, len(out), len(ntoks)))
        out.extend(ntoks)
    while len(out) < length:
        if src >= len(filler):
            src = 0
        out.append(filler[src])
        src += 1
    return Document(doc_index, out[:length], needles)


def build_plan(
    tok: Tokenizer, scenario: Scenario, ctx: int, seed: int, extra_tokens: int = 0
) -> tuple[list[int], list[Document]]:
    """Checkpoints and documents of ctx + extra_tokens tokens (the extra tokens are the
    text's own continuation after the last checkpoint, used for calibration, never fed)."""
    checkpoints = default_checkpoints(ctx, scenario.plan.checkpoints)
    per_doc = scenario.needle.per_segment * len(checkpoints) if "needle" in scenario.probes else 0
    docs = []
    for d in range(scenario.plan.documents):
        rng = random.Random(f"{seed}:needles:{d}")
        kv = draw_keys_values(per_doc, scenario.needle.value_digits, rng, scenario.needle.attributes)
        docs.append(
            build_document(
                tok,
                scenario=scenario,
                doc_index=d,
                length=ctx + extra_tokens,
                checkpoints=checkpoints,
                keys_values=kv,
                seed=seed,
            )
        )
    return checkpoints, docs


def items_at(doc: Document, ctx: int) -> list[NeedleItem]:
    """Every needle fully planted before `ctx` is queried at `ctx`."""
    return [
        NeedleItem(
            doc=doc.index,
            ctx=ctx,
            key=n.key,
            expected=n.value,
            position=n.position,
            depth=round(n.position / ctx, 4),
            distance=ctx - n.end,
        )
        for n in doc.needles
        if n.end <= ctx
    ]


@dataclass(frozen=True)
class ClassicCell:
    """One classic (RULER-style) prompt: a single needle at a given depth of a fresh context."""

    document: Document
    item: NeedleItem


def build_classic_cells(tok: Tokenizer, scenario: Scenario, ctx: int, seed: int) -> list[ClassicCell]:
    """One prompt per (length, depth, repeat), evaluated from scratch."""
    checkpoints = default_checkpoints(ctx, scenario.plan.checkpoints)
    cells: list[ClassicCell] = []
    rng = random.Random(f"{seed}:classic")
    n = len(checkpoints) * len(scenario.classic.depths) * scenario.classic.repeats
    kvs = iter(draw_keys_values(n, scenario.needle.value_digits, rng, scenario.needle.attributes))
    for length in checkpoints:
        for depth in scenario.classic.depths:
            for rep in range(scenario.classic.repeats):
                key, value = next(kvs)
                ntoks = tok.tokenize(" " + scenario.needle.template.format(key=key, value=value))
                target = max(1, min(int(depth * length), length - len(ntoks) - 48))
                while True:
                    doc = _plant(
                        tok,
                        scenario=scenario,
                        doc_index=rep,
                        length=length,
                        keys_values=[(key, value)],
                        needle_tokens=[ntoks],
                        targets=[target],
                        seed=seed,
                    )
                    # The next sentence end may lie past the prompt's end: move the target earlier.
                    if doc.needles or target <= 1:
                        break
                    target = max(1, target - 64)
                cells.extend(ClassicCell(doc, it) for it in items_at(doc, length))
    return cells
