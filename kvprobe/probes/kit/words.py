"""What the question probes plant: words, codes and numbers drawn without repeats from a seeded
stream, and where the spans of each group aim within a checkpoint segment. Pure functions."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

from kvprobe.infra.errors import UserError

# Concrete, common words: most are one token in the tokenizers of small models, and none is a
# number, so an answer made of them is told apart from a planted value.
NOUNS = (
    "apple anchor badger basket beacon bottle bridge candle canyon carpet castle cedar cherry "
    "cobalt comet copper cotton crystal dagger desert dolphin dragon eagle ember falcon feather "
    "forest fossil garden glacier granite harbor hammer helmet island jacket jungle kettle ladder "
    "lantern lemon magnet marble meadow mirror monkey needle orchid otter paddle pepper pillow "
    "planet pocket quartz rabbit ribbon river rocket saddle salmon shadow silver spider spruce "
    "statue stone sugar thunder tiger timber tomato tunnel velvet violin walnut willow window "
    "winter wizard zebra"
).split()
PLACES = (
    "harbour orchard market quarry library bakery station museum garage chapel workshop "
    "lighthouse greenhouse warehouse observatory pharmacy brewery foundry stable armoury "
    "boathouse dairy gallery laundry mill pantry smithy tannery vineyard courthouse"
).split()
SIDES = ("north", "south", "east", "west", "upper", "lower", "old", "new")
SIDED_PLACES = len(SIDES) * len(PLACES)
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
HEX = "0123456789abcdef"
CODES = len(HEX) ** 4  # the codes of one stem
T = TypeVar("T")


def distinct(
    n: int, make: Callable[[random.Random], str], rng: random.Random, what: str, capacity: int
) -> list[str]:
    """`n` different strings from `make`; a plan that needs more than exist is refused."""
    if n > capacity:
        raise UserError(
            f"{n:,} distinct {what} are needed, but only {capacity:,} exist: plant fewer per segment"
        )
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        value = make(rng)
        if value not in seen:
            seen.add(value)
            out.append(value)
    return out


def value_count(digits: int) -> int:
    """How many numbers of `digits` digits there are."""
    return int(9 * 10 ** (digits - 1))


def number(digits: int) -> Callable[[random.Random], str]:
    return lambda rng: str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def numbers(n: int, digits: int, rng: random.Random) -> list[str]:
    """`n` different numbers of `digits` digits."""
    return distinct(n, number(digits), rng, "values", value_count(digits))


def chunks(values: Sequence[T], size: int) -> list[list[T]]:
    """`values` cut into lists of `size`, in order (one group's share each)."""
    return [list(values[i : i + size]) for i in range(0, len(values), size)]


def sided_place(rng: random.Random) -> str:
    """A name such as "north harbour" (a tally's, a logbook's): one of SIDED_PLACES."""
    return f"{rng.choice(SIDES)} {rng.choice(PLACES)}"


def code(rng: random.Random, stem: str = "") -> str:
    """A code such as "a3f9-17c2" (one of CODES for each stem); codes that share the stem (their
    first half) look alike."""
    first = stem or "".join(rng.choice(HEX) for _ in range(4))
    return first + "-" + "".join(rng.choice(HEX) for _ in range(4))


def variable(rng: random.Random) -> str:
    """A variable's name: five capital letters, as RULER's (one of VARIABLES)."""
    return "".join(rng.choice(LETTERS) for _ in range(5))


VARIABLES = len(LETTERS) ** 5


def pair_of_words(rng: random.Random) -> str:
    """A key such as "amber-falcon": two nouns (RULER's keys are word pairs too)."""
    return "-".join(rng.sample(NOUNS, 2))


PAIRS_OF_WORDS = len(NOUNS) * (len(NOUNS) - 1)


def group_targets(
    checkpoints: list[int], sizes: Sequence[int], margin: int, rng: random.Random
) -> list[list[int]]:
    """Where each group's spans aim (`sizes`: every group's span count, the first segment's
    groups first): for every checkpoint segment, its groups' spans spread evenly over the
    segment (jittered, the groups interleaved at random), each group's targets in order. Groups
    of segments too short to hold them get no targets (an empty list)."""
    per_segment = len(sizes) // len(checkpoints)
    out: list[list[int]] = []
    start = 0
    for segment, end in enumerate(checkpoints):
        sizes_per_segment = sizes[segment * per_segment : (segment + 1) * per_segment]
        n = sum(sizes_per_segment)
        # The last tenth stays free too: a span lands at the first sentence end after its aim,
        # and a group with a span past the checkpoint is asked only at the next one.
        usable = int((end - start) * 0.9) - margin
        slots: list[int] = []
        if usable > 2 * n:
            step = usable / n
            slots = [int(start + (i + 0.5) * step + rng.uniform(-0.3, 0.3) * step) for i in range(n)]
        owners = [g for g, size in enumerate(sizes_per_segment) for _ in range(size)]
        rng.shuffle(owners)
        for g in range(len(sizes_per_segment)):
            out.append(sorted(t for t, o in zip(slots, owners, strict=False) if o == g))
        start = end
    return out
