"""The plan's documents: haystack text with token spans planted at known positions.

Pure functions of a tokenizer and a seed. A document is a token list; each span a probe plants
(a needle) goes in at a sentence boundary so the text stays natural, and its exact token
position is recorded. Which spans go in, and where they aim, is the probes' business
(`Probe.inserts`).
"""

from __future__ import annotations

from collections.abc import Sequence

from kvprobe.api import Document, HaystackSpec, Insert, PlantedSpan, Probe, Scenario, Tokenizer
from kvprobe.plan.haystack import document_text

__all__ = ["Document", "Insert", "PlantedSpan", "Tokenizer", "build_plan", "default_checkpoints", "plant"]


def default_checkpoints(ctx: int, explicit: list[int] | None = None, first: int = 1024) -> list[int]:
    """`first` (1024), twice that, ... below ctx, then ctx itself (or the scenario's list, capped)."""
    if explicit:
        points = sorted({c for c in explicit if c < ctx} | {ctx})
        return points
    points = []
    length = first
    while length < ctx:
        points.append(length)
        length *= 2
    points.append(ctx)
    return points


def _is_sentence_end(piece: str) -> bool:
    return piece.rstrip().endswith((".", "!", "?")) and not piece.endswith("\n")


def plant(
    tok: Tokenizer,
    haystack: HaystackSpec,
    doc_index: int,
    length: int,
    inserts: Sequence[Insert],
    *,
    seed: int,
    lead: Sequence[int] | None = None,
) -> Document:
    """Copy filler tokens after `lead` (BOS, or the chat template's text before the user's
    message; None: the tokenizer's BOS), inserting each span, in target order, at the first sentence
    end after its target; returns exactly `length` tokens (spans that no longer fit are left
    out)."""
    # ~3.5 characters per token for English; ask for plenty and cut.
    text = document_text(haystack.kind, haystack.path, doc_index, seed, min_chars=length * 6)
    filler = tok.tokenize(text)
    if lead is None:
        lead = [tok.bos] if tok.bos is not None else []
    out: list[int] = list(lead)
    spans: list[PlantedSpan] = []
    src = 0
    for insert in inserts:
        while src < len(filler) and (len(out) < insert.target or not _is_sentence_end(tok.piece(out[-1]))):
            out.append(filler[src])
            src += 1
        if len(out) + len(insert.tokens) > length:
            break
        spans.append(
            PlantedSpan(
                doc_index,
                insert.key,
                insert.value,
                len(out),
                len(insert.tokens),
                insert.probe,
                insert.payload,
            )
        )
        out.extend(insert.tokens)
    while len(out) < length:
        if src >= len(filler):
            src = 0
        out.append(filler[src])
        src += 1
    return Document(doc_index, out[:length], spans)


def build_plan(
    tok: Tokenizer,
    scenario: Scenario,
    ctx: int,
    seed: int,
    probes: Sequence[Probe],
    *,
    lead: Sequence[int] | None = None,
) -> tuple[list[int], list[Document]]:
    """Checkpoints, and documents of ctx tokens plus what the probes ask to carry past it (the
    text's own continuation after the last checkpoint, never fed) with the probes' spans."""
    checkpoints = default_checkpoints(ctx, scenario.plan.checkpoints, scenario.plan.first_checkpoint)
    extra = max((p.extra_document_tokens(scenario) for p in probes), default=0)
    docs = []
    for d in range(scenario.plan.documents):
        # Several probes plant into one document: in target order (stable, so one probe's own
        # order among equal targets is kept).
        inserts = sorted(
            (i for p in probes for i in p.inserts(tok, scenario, checkpoints, d, seed)),
            key=lambda i: i.target,
        )
        docs.append(plant(tok, scenario.haystack, d, ctx + extra, inserts, seed=seed, lead=lead))
    return checkpoints, docs
