"""Terminal output of `kvprobe doctor` (rich). Names, paths and metadata text come from the
file: they pass `plain` (where markup is on) or `visible` (where it is off), so neither markup
nor a control character in them reaches the terminal, whatever console prints them."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from kvprobe.api.record import JsonObject
from kvprobe.infra.display import plain, visible
from kvprobe.infra.errors import UserError
from kvprobe.plan.chat import ChatTemplate, find_framing
from kvprobe.views.fit import Units, print_fitted
from kvprobe.weights.doctor import GiB, MiB, short_type

SEVERITY_STYLE = {"serious": "bold red", "warning": "yellow", "info": "cyan"}


def _size(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def _params(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    return f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def template_text(facts: JsonObject) -> str:  # weights.doctor's facts: the GGUF's own metadata
    """The model's chat template in a line: family, sha256, its default system message."""
    text = facts.get("chat_template")
    if not text:
        return "none (raw text only; kvprobe run uses raw text unless given --chat-template FILE)"
    template = ChatTemplate(text, "gguf")
    said = f"{template.family}, sha256 {template.sha256[:12]}"
    try:
        framing = find_framing(
            template,
            bos_token=facts.get("bos_text") or "",
            eos_token=facts.get("eos_text") or "",
            system=None,
        )
    except UserError as exc:
        why = str(exc).split(") ", 1)[-1]  # the message without "the chat template (gguf, sha256 …)"
        return f"{said}; kvprobe cannot use it: it {why[:200]}"
    system = (
        f'default system message "{framing.default_system[:80]}"'
        if framing.default_system
        else "no default system message"
    )
    return f"{said}, {system}" + ("; a thinking template" if template.thinking else "")


def print_doctor(report: JsonObject, console: Console) -> None:  # weights.doctor.diagnose's, plain
    f = report["facts"]
    experts = f"{f['n_experts']} experts ({f['n_experts_used']} used)" if f["n_experts"] > 1 else "dense"
    output = f["output_type"] or f"tied to token_embd ({f['token_embd_type']})"
    imatrix = f["imatrix"]
    im_text = (
        ", ".join(f"{k} {v}" for k, v in imatrix.items())
        if imatrix
        else "none (no quantize.imatrix.* metadata)"
    )
    console.print(f"[bold]{plain(f['name'])}[/]  {plain(f['path'])}")
    for label, value in (
        ("name", f"{f['general_name'] or '-'}"),
        ("architecture", f"{f['architecture']}, {_params(f['n_params'])} parameters, {experts}"),
        ("training context", f"{f['n_ctx_train']:,} tokens"),
        (
            "file type",
            f"{short_type(f['file_type'])}, {f['bits_per_weight']:.2f} bits per weight, "
            f"{_size(f['weights_bytes'])} of tensors",
        ),
        ("token_embd / output", f"{f['token_embd_type']} / {output}"),
        ("weight matrix types", ", ".join(f["weight_types"])),
        ("importance matrix", im_text),
        ("chat template", template_text(f)),
    ):
        console.print(f"  {label:>20}: {visible(value)}", markup=False, highlight=False)

    types = Table(title="Tensor types")
    for col in ("type", "tensors", "parameters", "share", "size"):
        types.add_column(col, justify="left" if col == "type" else "right")
    for name, t in f["tensor_types"].items():
        types.add_row(
            name,
            str(t["tensors"]),
            _params(t["params"]),
            f"{t['params'] / f['n_params']:.1%}" if f["n_params"] else "-",  # every tensor may be empty
            _size(t["bytes"]),
        )
    print_fitted(types, console)

    found = Table(title="Findings")
    for col in ("severity", "finding", "evidence", "fix"):
        found.add_column(col)
    for x in report["findings"]:
        style = SEVERITY_STYLE[x["severity"]]
        found.add_row(
            f"[{style}]{x['severity']}[/]", plain(x["message"]), plain(x["evidence"]), plain(x["fix"])
        )
    if not report["findings"]:
        found.add_row("", "no weight-side problem found", "", "")
    print_fitted(found, console)
    print_fitted(kv_table(report), console)


def kv_table(report: JsonObject) -> Table:  # weights.doctor.diagnose's, plain
    f = report["facts"]
    swa = any(f["swa_layers"])
    title = "KV cache memory (llama-server / llama-cli defaults"
    title += "; in parentheses with --swa-full, the default of llama-cpp-python)" if swa else ")"
    vram = report["vram_gb"]
    if vram is not None:
        title += f"; fits: weights {_size(f['weights_bytes'])} + cache leave 0.5 GiB of {vram:g} GB"
    table = Table(title=title)
    table.add_column("context", justify="right")
    caches = list(dict.fromkeys(r["cache"] for r in report["kv_cache"]))
    for c in caches:
        table.add_column(c, justify="right")
    for n_ctx in dict.fromkeys(r["n_ctx"] for r in report["kv_cache"]):
        label = f"{n_ctx:,}" + (" (train)" if n_ctx == f["n_ctx_train"] else "")
        cells: list[str | Units] = [label]
        for c in caches:
            r = next(r for r in report["kv_cache"] if r["n_ctx"] == n_ctx and r["cache"] == c)
            # A size never parts from its unit: the cell wraps between its figures only.
            units: list[str | Text] = [_size(r["kv_bytes"])]
            if swa:
                units.append(f"({_size(r['kv_bytes_swa_full'])})")
            if "fits" in r:
                units.append(
                    Text(r["fits"], style={"yes": "green", "tight": "yellow", "no": "red"}[r["fits"]])
                )
            cells.append(Units(units))
        table.add_row(*cells)
    return table
