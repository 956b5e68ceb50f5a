"""The needle plan: which needles go into each document, where they aim, and which (needle,
checkpoint) pairs are queried; and the classic grid of one prompt per (length, depth) cell.

Pure functions of a tokenizer and a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kvprobe.api import Document, Insert, Tokenizer
from kvprobe.infra.errors import UserError
from kvprobe.plan.documents import default_checkpoints, plant
from kvprobe.plan.scenario import HASHED_IF_SET, Scenario

DEFAULT_ATTRIBUTES = (
    "locker number",
    "passport number",
    "ticket number",
    "library card number",
    "invoice number",
    "account number",
    "badge number",
    "room number",
    "parcel number",
    "licence number",
    "seat number",
    "order number",
    "serial number",
    "permit number",
    "policy number",
    "receipt number",
    "voucher number",
    "claim number",
    "booking number",
    "visa number",
)


@dataclass(frozen=True)
class NeedleSpec:
    # The query repeats the needle's words up to the value, so the model only has to
    # find the key and copy what follows (RULER's niah_single, in completion form).
    # A key is a person's name and an attribute ("Vera Holm's locker number"): with one
    # shared frame for every needle the 270M default model confused needles; two cues
    # that no other needle shares keep the multi-needle confound small.
    template: str = "{key} is {value}."
    query: str = "{key} is"
    answer: str = " {value}"
    attributes: list[str] = field(default_factory=lambda: list(DEFAULT_ATTRIBUTES))
    value_digits: int = 7
    per_segment: int = 4  # needles planted between consecutive checkpoints, per document
    generate_tokens: int = 12  # greedy tokens shown for a failed answer
    # Score a checkpoint's queries as parallel fork sequences, packed into as few llama_decode
    # calls as a chunk holds (false: one small decode per query, as before 0.2).
    batch_queries: bool = True
    # In chat form the question is the end of the user's message, and the reply starts with
    # the answer prefix (RULER's answer_prefix), so a correct reply in a full sentence ("Vera
    # Holm's locker number is 4818213.") is scored on its value, as the bare answer is.
    chat_query: str = field(default="What is {key}? Answer with the number only.", metadata=HASHED_IF_SET)
    answer_prefix: str = field(default="{key} is", metadata=HASHED_IF_SET)


@dataclass(frozen=True)
class ClassicSpec:
    depths: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    repeats: int = 4  # prompts per (length, depth) cell


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
    needle, classic = scenario.spec(NeedleSpec), scenario.spec(ClassicSpec)
    checkpoints = default_checkpoints(ctx, scenario.plan.checkpoints, scenario.plan.first_checkpoint)
    if mode == "classic":
        n = len(checkpoints) * len(classic.depths) * classic.repeats
    else:
        n = needle.per_segment * len(checkpoints)
    check_needle_capacity(n, needle.value_digits, needle.attributes)


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


def needle_inserts(
    tok: Tokenizer, scenario: Scenario, checkpoints: list[int], doc_index: int, seed: int
) -> list[Insert]:
    """The needles of one document: `per_segment` per checkpoint segment, keys and values from
    their own seeded stream, targets spread across each segment."""
    spec = scenario.spec(NeedleSpec)
    per_doc = spec.per_segment * len(checkpoints)
    keys_values = draw_keys_values(
        per_doc, spec.value_digits, random.Random(f"{seed}:needles:{doc_index}"), spec.attributes
    )
    rng = random.Random(f"{seed}:targets:{doc_index}")
    needle_tokens = [tok.tokenize(" " + spec.template.format(key=k, value=v)) for k, v in keys_values]
    if not keys_values:
        return []
    longest = max(len(t) for t in needle_tokens)
    targets = needle_targets(checkpoints, spec.per_segment, margin=longest + 48, rng=rng)
    return [
        Insert(k, v, toks, target, probe="needle")
        for (k, v), toks, target in zip(keys_values, needle_tokens, targets[: len(keys_values)], strict=False)
    ]


def items_at(document: Document, length: int) -> list[NeedleItem]:
    """Every needle fully planted before `length` is queried at that checkpoint."""
    return [
        NeedleItem(
            doc=document.index,
            ctx=length,
            key=n.key,
            expected=n.value,
            position=n.position,
            depth=round(n.position / length, 4),
            distance=length - n.end,
        )
        for n in document.spans_of("needle")
        if n.end <= length
    ]


@dataclass(frozen=True)
class ClassicCell:
    """One classic (RULER-style) prompt: a single needle at a given depth of a fresh context."""

    document: Document
    item: NeedleItem


def build_classic_cells(
    tok: Tokenizer, scenario: Scenario, ctx: int, seed: int, lead: list[int] | None = None
) -> list[ClassicCell]:
    """One prompt per (length, depth, repeat), evaluated from scratch."""
    needle, classic = scenario.spec(NeedleSpec), scenario.spec(ClassicSpec)
    checkpoints = default_checkpoints(ctx, scenario.plan.checkpoints, scenario.plan.first_checkpoint)
    cells: list[ClassicCell] = []
    rng = random.Random(f"{seed}:classic")
    n = len(checkpoints) * len(classic.depths) * classic.repeats
    kvs = iter(draw_keys_values(n, needle.value_digits, rng, needle.attributes))
    for length in checkpoints:
        for depth in classic.depths:
            for rep in range(classic.repeats):
                key, value = next(kvs)
                ntoks = tok.tokenize(" " + needle.template.format(key=key, value=value))
                target = max(1, min(int(depth * length), length - len(ntoks) - 48))
                while True:
                    doc = plant(
                        tok, scenario.haystack, rep, length,
                        [Insert(key, value, ntoks, target, probe="needle")], seed=seed, lead=lead,
                    )  # fmt: skip
                    # The next sentence end may lie past the prompt's end: move the target earlier.
                    if doc.spans or target <= 1:
                        break
                    target = max(1, target - 64)
                cells.extend(ClassicCell(doc, it) for it in items_at(doc, length))
    return cells
