"""Work across sequences and contexts: lockstep feeding of several contexts, fork groups,
packing many forks into few batches, parallel greedy continuations, teacher forcing.

Every batch here depends only on token counts, never on what a configuration computed, so
every configuration gets the same batch shapes (batch shape changes numerics)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from kvprobe.api.engine import ChunkCallback, FedCallback, TeacherForced, TopCallback, TopLogprobs, TopRequest
from kvprobe.infra.errors import EngineError

if TYPE_CHECKING:
    from kvprobe.engine.llamacpp.context import Context

DOC_SEQ = 0
FORK_SEQ = 1


def teacher_forced(rows: Sequence[np.ndarray], answer: Sequence[int]) -> TeacherForced:
    """The answer's log-probs from the logits rows that predict each of its tokens."""
    lps: list[float] = []
    first_bad: int | None = None
    for i, (row, tok) in enumerate(zip(rows, answer, strict=True)):
        lp, top = _log_softmax_at(row, tok)
        lps.append(lp)
        if top != tok and first_bad is None:
            first_bad = i
    return TeacherForced(float(sum(lps)), lps, first_bad is None, first_bad)


def _log_softmax_at(logits: np.ndarray, token: int) -> tuple[float, int]:
    x = logits.astype(np.float64)
    m = float(x.max())
    lse = m + float(np.log(np.exp(x - m).sum()))
    return float(x[token] - lse), int(np.argmax(logits))


def feed_lockstep(
    contexts: Sequence[Context],
    tokens: Sequence[int],
    on_chunk: ChunkCallback | None = None,
    on_fed: FedCallback | None = None,
) -> None:
    """Append the same tokens to the document of every context, chunk by chunk.

    Chunk boundaries sit on absolute positions, so feeding 0..L then L..M gives the same
    batches as feeding 0..M whenever L is a multiple of the chunk: every configuration sees
    identical batch shapes (batch shape changes numerics). With `on_chunk`, every position's
    logits are computed and `on_chunk(first_position, [logits of each context])` gets them
    as views into llama.cpp's buffers while they are valid, one chunk at a time, so memory
    never holds more than chunk x n_vocab floats per context. `on_fed(n)` hears of every chunk
    (n tokens over all contexts), for progress.
    """
    first = contexts[0]
    if any(c.n_past != first.n_past or c.settings.chunk != first.settings.chunk for c in contexts):
        raise EngineError("lockstep contexts must hold documents of equal length and equal chunk size")
    chunk = first.settings.chunk
    i = 0
    while i < len(tokens):
        pos0 = first.n_past
        part = tokens[i : i + chunk - (pos0 % chunk)]
        want = range(len(part)) if on_chunk else ()
        views = []
        for context in contexts:
            context._decode(part, pos0, DOC_SEQ, want=want)
            if on_chunk:
                views.append(context._logits_rows(len(part)))
        if on_chunk:
            on_chunk(pos0, views)
        for context in contexts:
            context.n_past += len(part)
        i += len(part)
        if on_fed is not None:
            on_fed(len(part) * len(contexts))


def feed_sampled(
    contexts: Sequence[Context],
    tokens: Sequence[int],
    top: TopRequest,
    on_top: TopCallback,
    on_fed: FedCallback | None = None,
) -> None:
    """The llama-server engine's request sequence, in this process: for every sampled position
    P (1 + j * stride) one batch of the tokens since the last (split at the chunk size from its
    own start, as a server splits a prompt), P's row read from its last token's logits; then
    the rest in one batch. These are the batches a server evaluates for the same TopRequest, so
    its rows and a server's differ only by the build (the build check), never by batch shape.
    Only the sampled rows are computed: the top n of the full log-softmax, and the document's
    next token's exact log-prob."""
    first = contexts[0]
    if any(c.n_past != first.n_past or c.settings.chunk != first.settings.chunk for c in contexts):
        raise EngineError("lockstep contexts must hold documents of equal length and equal chunk size")
    start, end = first.n_past, first.n_past + len(tokens)
    positions = [p for p in range(start + 1, end + 1) if (p - 1) % top.stride == 0 and p < len(top.document)]
    n_probs = min(top.n_probs, first.model.n_vocab)
    rows = []
    for context in contexts:
        found = []
        fed = start
        for p in positions:  # p > fed: the positions rise from start + 1
            _decode_span(context, tokens[fed - start : p - start], want_last=True)
            last = (p - fed - 1) % context.settings.chunk  # the last token's index in its batch
            found.append(_top_row(context._logits(last), n_probs, int(top.document[p])))
            fed = p
        if fed < end:
            _decode_span(context, tokens[fed - start :], want_last=False)
        rows.append(_top_logprobs(found, positions, n_probs))
        if on_fed is not None:
            on_fed(len(tokens))
    if positions:
        on_top(rows)


def _decode_span(context: Context, part: Sequence[int], *, want_last: bool) -> None:
    """Append `part` to the document in batches of the chunk size counted from its start."""
    chunk = context.settings.chunk
    for i in range(0, len(part), chunk):
        piece = part[i : i + chunk]
        last = want_last and i + chunk >= len(part)
        context._decode(piece, context.n_past, DOC_SEQ, want=[len(piece) - 1] if last else ())
        context.n_past += len(piece)


def _top_row(logits: np.ndarray, n_probs: int, target: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The n most likely ids (sorted, most likely first), their log-probs over the whole
    vocabulary, and the target's log-prob."""
    x = logits.astype(np.float64)
    m = float(x.max())
    log_probs = x - (m + float(np.log(np.exp(x - m).sum())))
    ids = np.argpartition(-log_probs, n_probs - 1)[:n_probs] if n_probs < x.size else np.arange(x.size)
    ids = ids[np.argsort(-log_probs[ids], kind="stable")]
    return ids.astype(np.int32), log_probs[ids].astype(np.float32), float(log_probs[target])


def _top_logprobs(
    found: Sequence[tuple[np.ndarray, np.ndarray, float]], positions: Sequence[int], n_probs: int
) -> TopLogprobs:
    ids = np.empty((len(found), n_probs), dtype=np.int32)
    lps = np.empty((len(found), n_probs), dtype=np.float32)
    target = np.empty(len(found))
    for j, (row_ids, row_lps, lp) in enumerate(found):
        ids[j], lps[j], target[j] = row_ids, row_lps, lp
    return TopLogprobs(np.asarray(positions, dtype=np.int64), ids, lps, target, target.copy())


class ForkGroup:
    """Bookkeeping for parallel forks: sequence ids 1..k, removed on exit."""

    def __init__(self, context: Context, n: int):
        if n + 1 > context.settings.n_seq_max:
            raise EngineError(f"{n} parallel forks need n_seq_max >= {n + 1}")
        self.context = context
        self.seqs = list(range(FORK_SEQ, FORK_SEQ + n))

    def __enter__(self) -> list[int]:
        return self.seqs

    def __exit__(self, *exc: object) -> None:
        for seq in self.seqs:
            self.context._seq_rm(seq, -1, -1)


def packs(sizes: Sequence[int], context: Context) -> list[list[int]]:
    """Consecutive indices packed so each pack's tokens fit one chunk and its forks the
    context's sequences; an item longer than a chunk goes alone."""
    chunk, room = context.settings.chunk, context.settings.n_seq_max - 1
    out: list[list[int]] = []
    size = 0
    for j, n in enumerate(sizes):
        if not out or size + n > chunk or len(out[-1]) >= room:
            out.append([])
            size = 0
        out[-1].append(j)
        size += n
    return out


def score_many(
    context: Context, requests: Sequence[tuple[Sequence[int], Sequence[int]]]
) -> list[TeacherForced]:
    """`score` for many (prompt, answer) pairs at once: each in its own fork of the
    document, packed in order into as few llama_decode calls as the chunk and n_seq_max
    allow. The packing depends only on the token counts, so every configuration gets the
    same batches."""
    out: list[TeacherForced] = []
    for pack in packs([len(p) + len(a) - 1 for p, a in requests], context):
        if (
            len(pack) == 1
            and len(requests[pack[0]][0]) + len(requests[pack[0]][1]) - 1 > context.settings.chunk
        ):
            out.append(context.score(*requests[pack[0]]))  # longer than a chunk: its own decodes
            continue
        with ForkGroup(context, len(pack)) as seqs:
            tokens: list[int] = []
            positions: list[int] = []
            seq_ids: list[int] = []
            wanted: list[list[int]] = []
            for seq, j in zip(seqs, pack, strict=True):
                context._seq_cp(DOC_SEQ, seq, -1, -1)
                prompt, answer = requests[j]
                part = list(prompt) + list(answer[:-1])
                first = len(tokens) + len(part) - len(answer)
                wanted.append(list(range(first, first + len(answer))))
                tokens += part
                positions += range(context.n_past, context.n_past + len(part))
                seq_ids += [seq] * len(part)
            context._decode_rows(tokens, positions, seq_ids, [i for rows in wanted for i in rows])
            for j, rows in zip(pack, wanted, strict=True):
                out.append(teacher_forced([context._logits(i) for i in rows], requests[j][1]))
    return out


def generate_many(
    context: Context, prompts: Sequence[Sequence[int]], max_tokens: Sequence[int]
) -> list[list[int]]:
    """`generate` for many prompts at once (`max_tokens` each): each in its own fork of the
    document, the prompts packed as in score_many, then one token per unfinished fork per
    decode."""
    out: list[list[int]] = []
    for pack in packs([len(p) for p in prompts], context):
        if len(prompts[pack[0]]) > context.settings.chunk:
            out.append(context.generate(prompts[pack[0]], max_tokens[pack[0]]))  # its own decodes
            continue
        with ForkGroup(context, len(pack)) as seqs:
            for seq in seqs:
                context._seq_cp(DOC_SEQ, seq, -1, -1)
            starts = [context.n_past] * len(pack)
            limits = [max_tokens[j] for j in pack]
            out += greedy_parallel(context, seqs, [prompts[j] for j in pack], starts, limits)
    return out


def greedy_parallel(
    context: Context,
    seqs: Sequence[int],
    firsts: Sequence[Sequence[int]],
    starts: Sequence[int],
    max_tokens: Sequence[int],
) -> list[list[int]]:
    """Greedy continuations in parallel fork sequences: fork j first decodes `firsts[j]` from
    position `starts[j]` (all forks in one batch), then every step decodes one token per
    unfinished fork in a single batch. Fork j ends at end of generation or `max_tokens[j]`."""
    outs: list[list[int]] = [[] for _ in seqs]
    tokens = [t for f in firsts for t in f]
    positions = [p for f, s in zip(firsts, starts, strict=True) for p in range(s, s + len(f))]
    seq_ids = [q for f, q in zip(firsts, seqs, strict=True) for _ in f]
    last = list(itertools.accumulate(len(f) for f in firsts))
    context._decode_rows(tokens, positions, seq_ids, want=[i - 1 for i in last])
    nxt = [int(np.argmax(context._logits(i - 1))) for i in last]
    active = list(range(len(seqs)))
    positions = [s + len(f) for f, s in zip(firsts, starts, strict=True)]
    for _ in range(max(max_tokens, default=0)):
        still: list[int] = []
        for j, tok in zip(active, nxt, strict=True):
            if context.model.is_eog(tok):
                continue
            outs[j].append(tok)
            if len(outs[j]) < max_tokens[j] and positions[j] < context.applied.n_ctx:
                still.append(j)
        if not still:
            break
        step = [nxt[active.index(j)] for j in still]
        context._decode_rows(
            step, [positions[j] for j in still], [seqs[j] for j in still], want=range(len(still))
        )
        nxt = [int(np.argmax(context._logits(i))) for i in range(len(still))]
        for j in still:
            positions[j] += 1
        active = still
    return outs


def generate_forks(
    context: Context,
    prefixes: Sequence[Sequence[int]],
    max_tokens: int,
    prompt: Sequence[int] = (),
) -> list[list[int]]:
    """Greedy continuations of the document cut at several points, in parallel sequences.

    `prefixes[j]` are the document's first p_j tokens (p_j <= context.n_past). Each fork shares
    the cells of positions < p_j - 1 and re-evaluates token p_j - 1 (then `prompt`, the same
    for every fork: a request in chat form) to get its first logits; every step then decodes
    one token per unfinished fork in a single batch.
    """
    points = [len(p) for p in prefixes]
    if any(p < 2 or p > context.n_past for p in points):
        raise EngineError(f"fork points {points} must lie in [2, {context.n_past}]")
    with ForkGroup(context, len(prefixes)) as seqs:
        for seq, p in zip(seqs, points, strict=True):
            context._seq_cp(DOC_SEQ, seq, 0, p - 1)
        firsts = [[p[-1], *prompt] for p in prefixes]
        return greedy_parallel(context, seqs, firsts, [p - 1 for p in points], [max_tokens] * len(points))
