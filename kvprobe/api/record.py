"""The typed parts of kvprobe's documents (the result file, its verdict, a comparison): pydantic
models whose attribute docstrings are the JSON Schema's descriptions (kvprobe.result.schema
generates the schema from them), and the names of what each probe defines for itself.

A field with a default may be absent from a file; a field typed `X | None` may be null. Every
record keeps fields it does not know (`extra="allow"`): a newer writer's, or a plug-in probe's.
Built in memory a record is validated leniently (a tuple becomes a list); read from a file,
strictly (kvprobe.result.check: 1.0 is no whole number, "7" no number)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

# What each probe defines for itself, as JSON objects: its item rows and summary rows (the
# fields every row has, `probe`, `config`, `ctx`, ..., and the probe's own, which its
# SchemaPart types), its own top-level section, its scenario sections. Readers index them as
# the probe's schema part guarantees; the values are typed Any for that reason.
Row = dict[str, Any]
ItemRow = Row  # one item: `probe`, `config`, `ctx`, `doc` and the probe's own fields
SummaryRow = Row  # one aggregate: `probe`, `metric`, `config`, `ctx`, `value`, `ci`, `n`, ...
ProbeSection = dict[str, Any]  # a probe's own top-level section of the result file
ScenarioSpec = dict[str, Any]  # the parsed scenario: its plan and every probe's section
JsonObject = dict[str, Any]  # a document as read from JSON, before it is checked and typed


class Record(BaseModel):
    """The base of every typed record. Its mapping view (`record["field"]`, `.get`, `in`) serves
    the readers not converted to attributes yet (the page's templates, the question probes'
    kit, plug-in probes written against the plain document); new code reads attributes."""

    model_config = ConfigDict(
        extra="allow",
        use_attribute_docstrings=True,
        defer_build=True,  # validators are built on first use: importing kvprobe stays quick
        protected_namespaces=(),
        ser_json_inf_nan="constants",
    )

    def __getitem__(self, key: str) -> Any:
        if key in type(self).model_fields:
            return getattr(self, key)
        extra = self.__pydantic_extra__ or {}
        if key in extra:
            return extra[key]
        raise KeyError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __contains__(self, key: object) -> bool:
        """As a plain document would say: the field was written (or set), not merely declared."""
        return key in self.model_fields_set or key in (self.__pydantic_extra__ or {})

    def __eq__(self, other: object) -> bool:
        """Equal to another record as pydantic compares them, and to a plain document (a file's
        JSON) that holds what this record holds."""
        if isinstance(other, Mapping) and not isinstance(other, BaseModel):
            return self.written() == dict(other)
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # mutable, as a dict: never a key

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]  # a mapping's keys, not pydantic's pairs
        return iter(self.keys())

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default  # noqa: SIM401 (this is `get`)

    def keys(self) -> list[str]:
        return [k for k in type(self).model_fields if k in self.model_fields_set] + list(
            self.__pydantic_extra__ or {}
        )

    def extra(self, key: str) -> Any:
        """A field this record does not declare (a plug-in's, or a probe's own section), or None."""
        return (self.__pydantic_extra__ or {}).get(key)

    def written(self) -> JsonObject:
        """The record as a document holds it: what was read or set (nothing a default filled
        in), its unknown fields included."""
        dumped: JsonObject = self.model_dump(exclude_unset=True)
        return dumped
