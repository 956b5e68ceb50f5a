"""The one TOML-to-dataclass checker (kvprobe.infra.toml_check) that scenarios and sweep files
are read with: each hint and each metadata key it reads, on real parsed TOML."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from typing import Literal

import pytest

from kvprobe.infra.errors import UserError
from kvprobe.infra.toml_check import Where, read_table


@dataclass(frozen=True)
class Inner:
    size: int = field(default=4, metadata={"bounds": (1, 8)})
    share: float = 0.5


@dataclass(frozen=True, kw_only=True)
class Outer:
    name: str = field(default="", metadata={"chars": 5})
    kind: Literal["prose", "noise"] = "prose"
    sizes: list[int] = field(default_factory=list, metadata={"bounds": (256, 1024), "items": (0, 2)})
    axis: list[str | Inner] = field(
        default_factory=lambda: ["a"], metadata={"one_or_list": True, "items": (1, 3)}
    )
    table: dict[str, float] = field(default_factory=dict)
    inner: Inner = Inner()
    needed: bool = field(metadata={"missing": "say yes or no"})
    maybe: int | None = None


def read(text: str) -> Outer:
    return read_table(Outer, tomllib.loads(text), Where("thing t.toml"))


def test_a_good_table_is_read_as_written() -> None:
    got = read(
        'needed = true\nname = "abc"\nkind = "noise"\nsizes = [256, 300]\naxis = "x"\n'
        "table = {a = 1, b = 0.5}\nmaybe = 3\n[inner]\nsize = 8\nshare = 1\n"
    )
    assert got == Outer(
        name="abc", kind="noise", sizes=[256, 300], axis=["x"], table={"a": 1, "b": 0.5},
        inner=Inner(8, 1), needed=True, maybe=3,
    )  # fmt: skip
    assert type(got.inner.share) is int  # as written: a hash of the value does not change
    assert read('needed = false\naxis = ["x", {size = 2}]\n').axis == ["x", Inner(2)]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            "needed = true\nnmae = 'x'\n",
            ("key 'nmae' is unknown", "did you mean name or maybe?", "allowed: name, kind"),
        ),
        ("needed = true\n[inner]\nsise = 2\n", ("key 'inner.sise'", "did you mean size?")),
        ("needed = 1\n", ("key 'needed' must be true/false, got 1",)),
        ("needed = true\nmaybe = true\n", ("key 'maybe' must be a whole number, got True",)),
        (
            "needed = true\nkind = 'prosa'\n",
            ("key 'kind' must be one of prose, noise", "did you mean prose?"),
        ),
        (
            "needed = true\nsizes = [256, 2000]\n",
            ("key 'sizes[1]' must be between 256 and 1,024, got 2,000",),
        ),
        ("needed = true\nsizes = [256, 257, 258]\n", ("key 'sizes' has 3 values, more than 2",)),
        ("needed = true\naxis = []\n", ("key 'axis' is empty", "or leave the key out for its default")),
        ("needed = true\naxis = [1]\n", ("key 'axis[0]' must be text or a table, got 1",)),
        ("needed = true\n[inner]\nsize = 0\n", ("key 'inner.size' must be between 1 and 8, got 0",)),
        ("needed = true\ninner = 3\n", ("key 'inner' must be a table, got 3",)),
        ("needed = true\nname = 'toolong'\n", ("key 'name' must be at most 5 characters",)),
        ("needed = true\ntable = {a = 'x'}\n", ("key 'table.a' must be a number, got 'x'",)),
        ("name = 'x'\n", ("key 'needed' is missing: say yes or no",)),
    ],
)
def test_a_bad_key_is_one_line_naming_its_path_and_the_fix(text: str, words: tuple[str, ...]) -> None:
    with pytest.raises(UserError) as info:
        read(text)
    message = str(info.value)
    assert message.startswith("thing t.toml: ")
    assert "\n" not in message
    for word in words:
        assert word in message


def test_a_base_keeps_what_the_table_does_not_give() -> None:
    base = Inner(size=2, share=0.25)
    assert read_table(Inner, {"share": 0.75}, Where("x"), "inner", base) == Inner(2, 0.75)
