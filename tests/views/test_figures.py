"""The figures and the HTML page of a saved result: the data behind each figure is checked on a
known result (not pixels), and the page is opened in a real browser when one is installed."""

from __future__ import annotations

import base64
import itertools
import json
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from kvprobe.api import Heatmap, LineFigure, ResultDoc, all_probes, get_probe
from kvprobe.cli import main
from tests.helpers import browser, examples, needs_browser

EXAMPLES = Path(__file__).resolve().parents[2] / "results" / "examples"
SPLIT = EXAMPLES / "splitkv-f16-q8_0-q4_0-8192.json"
REPETITION = EXAMPLES / "repetition-f16-q8_0-q4_0-8192.json"


def load(path: Path) -> ResultDoc:
    from kvprobe.result.store import load_result

    return load_result(path)


def by_key(figures: list[Any]) -> dict[str, Any]:
    return {f.key: f for f in figures}


def test_needle_accuracy_figure_holds_the_summary_and_the_onset() -> None:
    result = load(SPLIT)
    figures = by_key(get_probe("needle").figures(result))
    acc = figures["needle-accuracy"]
    assert isinstance(acc, LineFigure)
    assert acc.log2_x
    q4 = next(s for s in acc.series if s.label == "q4_0")
    rows = sorted((r for r in result["summary"] if r["metric"] == "accuracy" and r["config"] == "q4_0"),
                  key=lambda r: r["ctx"])  # fmt: skip
    assert q4.x == [r["ctx"] for r in rows]
    assert q4.y == [r["value"] for r in rows]
    assert q4.lo == [r["ci"][0] for r in rows]
    assert [s.reference for s in acc.series] == [
        s.label == "f16" for s in acc.series
    ]  # the reference stands out
    onset = result["verdict"]["configs"]["q4_0"]["onset_accuracy"]
    assert onset == 8192
    assert any(m.series == "q4_0" and m.x == onset and m.y == q4.y[-1] for m in acc.markers)
    diff = next(s for s in figures["needle-logprob-diff"].series if s.label == "q4_0")
    paired = [r for r in result["verdict"]["configs"]["q4_0"]["paired"] if r["metric"] == "answer_logprob"]
    assert diff.y == [r["diff"] for r in paired]


def test_the_heatmap_counts_items_by_depth_and_length() -> None:
    result = load(SPLIT)
    figures = by_key(get_probe("needle").figures(result))
    heat = figures["needle-heatmap-q4_0"]
    assert isinstance(heat, Heatmap)
    cell = [it for it in result["items"] if it["probe"] == "needle" and it["config"] == "q4_0"
            and it["ctx"] == 8192 and 0.2 <= it["depth"] < 0.4]  # fmt: skip
    assert heat.values[1][3] == pytest.approx(sum(it["correct"] for it in cell) / len(cell))
    delta = figures["needle-heatmap-q4_0-minus-f16"]
    base = figures["needle-heatmap-f16"]
    assert delta.diverging
    assert delta.values[1][3] == pytest.approx(heat.values[1][3] - base.values[1][3])


def test_divergence_figure_marks_the_onset_bin() -> None:
    result = load(EXAMPLES / "divergence-f16-q8_0-q4_0-8192.json")
    kl = by_key(get_probe("divergence").figures(result))["divergence-kl"]
    onsets = result["divergence"]["onset"]
    for s in kl.series:
        rows = [r for r in result["summary"] if r["metric"] == "kld_mean" and r["config"] == s.label
                and r["scope"] == "bin"]  # fmt: skip
        assert s.y == [r["value"] for r in sorted(rows, key=lambda r: r["ctx"])]
    expected = {c: o["bin"][1] for c, o in onsets.items() if o}
    assert {m.series: m.x for m in kl.markers} == expected


def test_repetition_figures_show_real_text_as_the_reference() -> None:
    result = load(REPETITION)
    figures = by_key(get_probe("repetition").figures(result))
    loops = figures["repetition-loop-rate"]
    text = next(s for s in loops.series if s.reference)
    assert text.label.startswith("real text")
    rows = [r for r in result["summary"] if r["metric"] == "loop_rate" and r["config"] == "(text)"]
    assert text.y == [r["value"] for r in sorted(rows, key=lambda r: r["ctx"])]
    (note,) = get_probe("repetition").notes(result)
    assert "most repetitive continuation" in note


def test_the_page_is_self_contained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "page.html"
    assert main(["report", str(SPLIT), "--html", str(page), "--png", str(tmp_path / "png")]) == 0
    text = page.read_text()
    assert "<script" not in text
    assert not re.search(r"(src|href)=\"https?:", text)  # nothing fetched from the network
    images = re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', text)
    expected = 1 + sum(len(p.figures(load(SPLIT))) for p in all_probes())  # the frontier, then the probes'
    assert len(images) == expected
    for data in images:
        assert ET.fromstring(base64.b64decode(data)).tag.endswith("svg")
    assert (
        text.index("Recommendation")
        < text.index("Verdict")
        < text.index("<h2>needle")
        < text.index("Provenance")
    )
    assert json.loads(SPLIT.read_text())["model"]["sha256"] in text
    assert len(list((tmp_path / "png").glob("*.png"))) == expected


def test_without_matplotlib_the_page_is_one_line_exit_2(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None; "  # as if the plot extra were not installed
        "from kvprobe.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    argv = [sys.executable, "-c", code, "report", str(SPLIT), "--html", str(tmp_path / "p.html")]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == 'kvprobe: error: figures need matplotlib: pip install "kvprobe[plot]"'
    assert not (tmp_path / "p.html").exists()


WRAPPER = """<!DOCTYPE html><html><body>
<iframe id="f" src="page.html" style="width:1200px;height:900px"></iframe>
<script>
document.getElementById('f').addEventListener('load', () => {
  const imgs = Array.from(document.getElementById('f').contentDocument.images);
  Promise.all(imgs.map(i => i.decode().then(() => (i.naturalWidth > 0 ? 1 : 0), () => 0))).then(r => {
    document.body.setAttribute('data-images', imgs.length + ':' + r.reduce((a, b) => a + b, 0));
  });
});
</script></body></html>"""


@needs_browser
def test_the_page_opens_in_a_real_browser(tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    assert main(["report", str(SPLIT), "--html", str(page)]) == 0
    (tmp_path / "wrapper.html").write_text(WRAPPER)  # the test's own script: the page has none
    flags = [
        browser(),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--allow-file-access-from-files",
    ]
    wrapper = (tmp_path / "wrapper.html").as_uri()
    dom = subprocess.run([*flags, "--virtual-time-budget=15000", "--dump-dom", wrapper],
                         capture_output=True, text=True, check=True, timeout=120)  # fmt: skip
    n = 1 + sum(len(p.figures(load(SPLIT))) for p in all_probes())
    assert f'data-images="{n}:{n}"' in dom.stdout  # every image decodes
    shot = tmp_path / "shot.png"
    proc = subprocess.run([*flags, "--enable-logging=stderr", "--v=0", "--window-size=1200,2400",
                           f"--screenshot={shot}", page.as_uri()],
                          capture_output=True, text=True, check=True, timeout=120)  # fmt: skip
    console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert console == []  # no console errors
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (1200, 2400)


def test_a_run_writes_its_page_beside_the_result(tiny_quick_result: Path) -> None:
    page = tiny_quick_result.with_suffix(".html")  # the plot extra is installed with dev
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert "Provenance" in text
    assert len(re.findall(r'src="data:image/svg\+xml;base64,', text)) >= 3


def test_compare_draws_old_and_new_on_the_same_axes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kvprobe.views.html import merged

    old, new = load(EXAMPLES / "quick-f16-q8_0-1024.json"), load(SPLIT)
    a = by_key(get_probe("needle").figures(old))["needle-accuracy"]
    b = by_key(get_probe("needle").figures(new))["needle-accuracy"]
    (both,) = merged(a, b)
    assert isinstance(both, LineFigure)
    labels = [s.label for s in both.series]
    assert labels[: len(a.series)] == [f"old {s.label}" for s in a.series]
    assert labels[len(a.series) :] == [f"new {s.label}" for s in b.series]
    from kvprobe.views.figures import config_style, figure_styles

    # Each configuration in its one colour, old dotted: the two references black, apart.
    styles = dict(zip(labels, figure_styles(labels, [s.reference for s in both.series]), strict=True))
    assert styles["old f16"].colour == styles["new f16"].colour == "#000000"
    assert styles["old f16"].line != styles["new f16"].line
    assert styles["old q8_0"].colour == styles["new q8_0"].colour == config_style("q8_0").colour
    page = tmp_path / "cmp.html"
    main(["compare", str(EXAMPLES / "quick-f16-q8_0-1024.json"), str(SPLIT), "--html", str(page)])
    text = page.read_text()
    assert "<script" not in text
    assert "old and new" in text
    assert "Verdict, old" in text
    assert "Verdict, new" in text


# --- no overlaps, nothing cut: where the drawn parts land -------------------------------------


def inside(inner: Any, outer: Any) -> bool:
    return bool(outer.x0 <= inner.x0 <= inner.x1 <= outer.x1 and outer.y0 <= inner.y0 <= inner.y1 <= outer.y1)


def crowded() -> Any:
    from kvprobe.api import Point, Scatter

    points = [Point(f"k=q{4 + i % 2}_0,v=f16 @ {1024 * (1 + i % 3):,}", 10 + i * 0.4, 0.01 + 0.001 * i,
                    ["equivalent", "worse"][i % 2], "140 tok/s") for i in range(8)]  # fmt: skip
    points.append(Point("f16", 40, 0.0, "reference", "479 tok/s"))
    title = "Quality against KV memory at 8,192 tokens (colour: equivalence to the reference), crowded"
    return Scatter("crowded", title, "KV MiB", "mean KL (nats)", points, level=(0.02, "bound"), log_y=True)


def test_scatter_labels_overlap_nothing_and_stay_inside_the_axes() -> None:
    from kvprobe.views.figures import layout

    drawn = layout(crowded())
    assert len(drawn.texts) == 9
    for i, box in enumerate(drawn.texts):
        assert inside(box, drawn.axes), i  # so no label runs into the title or off the figure
        for other in drawn.texts[:i]:
            assert not box.overlaps(other), i
    assert inside(drawn.title, drawn.figure)  # the long title is wrapped, not cut


def test_a_log_axis_invents_no_region_below_zero_for_the_reference() -> None:
    from kvprobe.views.figures import layout

    drawn = layout(crowded())
    assert drawn.y_ticks
    assert all(v > 0 for v in drawn.y_ticks)


def fits_its_frame(figure: Any) -> None:
    """The title and every text (colour bar ticks too) inside the figure, a scatter's labels
    and a heatmap's cell texts inside the axes and apart, a legend of many entries beside the
    axes."""
    from kvprobe.views.figures import layout

    drawn = layout(figure)
    assert inside(drawn.title, drawn.figure), figure.key
    assert inside(drawn.drawn, drawn.figure), figure.key
    ticks = drawn.x_tick_labels
    assert not any(box.overlaps(o) for i, box in enumerate(ticks) for o in ticks[:i]), figure.key
    for i, box in enumerate(drawn.texts):  # a scatter's labels, a heatmap's cell texts
        assert inside(box, drawn.axes), figure.key
        assert not any(box.overlaps(o) for o in drawn.texts[:i]), figure.key
    if drawn.legend is not None and isinstance(figure, LineFigure) and len(figure.series) > 4:
        assert drawn.legend.x0 >= drawn.axes.x1, figure.key  # beside the axes, not over the data
        assert drawn.legend.x1 <= drawn.figure.x1, figure.key


@pytest.mark.parametrize("name", [p.name for p in examples("results/examples/*.json")])
def test_every_examples_figures_fit_their_frame(name: str) -> None:
    from kvprobe.views.pictures import every_figure

    figures = every_figure(load(EXAMPLES / name))
    assert figures, f"{name}: no figure to check"  # an example without figures would pass unchecked
    for figure in figures:
        fits_its_frame(figure)


@pytest.mark.parametrize("name", [p.parent.name for p in examples("results/examples/*/sweep.json")])
def test_every_sweep_examples_figures_fit_their_frame(name: str) -> None:
    from kvprobe.sweep.collect import collect
    from kvprobe.sweep.view import every_figure
    from kvprobe.views.figures import layout

    figures = every_figure(collect(EXAMPLES / name))
    assert any(isinstance(f, Heatmap) for f in figures)
    for figure in figures:
        fits_its_frame(figure)
        if isinstance(figure, Heatmap):
            assert layout(figure).texts, figure.key  # the cells still say what they are


@pytest.mark.parametrize(
    ("types", "n_models"), [(["f16", "q8_0", "q4_0"], 6), (["f16", "q8_0", "q5_0", "q4_0"], 48)]
)
def test_a_large_sweep_grid_keeps_its_texts_apart_and_inside(types: list[str], n_models: int) -> None:
    """Split-kv configurations by models: the figure grows with the grid (up to a page), the
    column labels break at their commas, and past a page the cell texts shrink until apart;
    every one of them stays shown."""
    from kvprobe.views.figures import layout

    caches = types[1:] + [f"k={k},v={v}" for k, v in itertools.permutations(types, 2)]
    models = [f"model-{i}-Q4_K_M-with-a-long-name" for i in range(n_models)]
    grid = Heatmap(
        "sweep-decisions-16384", "Decision at 16,384 tokens (cell text: effective context)", "cache",
        "model", caches, models, [[float((i + j) % 3) for j in range(len(caches))] for i in range(n_models)],
        "decision", categories=["equivalent", "undecided", "worse"],
        text=[["undecided\n16,384"] * len(caches) for _ in models],
    )  # fmt: skip
    fits_its_frame(grid)
    assert len(layout(grid).texts) == len(caches) * len(models)


def test_no_two_series_look_alike_past_the_palette() -> None:
    from kvprobe.api import Series
    from kvprobe.views.figures import _pyplot, render

    series = [Series(f"s{i}", [1.0, 2.0], [float(i), float(i)]) for i in range(9)]
    figure = LineFigure("many", "nine series", "x", "y", series)
    render(figure, "png")
    plt = _pyplot()
    fig, ax = plt.subplots()
    from kvprobe.views.figures import _draw_lines

    _draw_lines(ax, figure)
    looks = [(line.get_color(), line.get_linestyle(), line.get_marker()) for line in ax.get_lines()]
    plt.close(fig)
    assert len(set(looks)) == 9


UNTIL = EXAMPLES / "until-decided-f16-q4_0-8192.json"


def test_a_verdicts_margins_are_drawn_on_the_figures_it_reads() -> None:
    """The answer log-prob difference with its ±margin, the KL with its bound: from the result's
    own margins, so that a figure shows why a configuration is worse."""
    result = load(EXAMPLES / "default-f16-q4_0-8192.json")
    margins = result["verdict"]["margins"]
    diff = by_key(get_probe("needle").figures(result))["needle-logprob-diff"]
    assert sorted(y for y, _ in diff.levels) == [-margins["answer_logprob"], margins["answer_logprob"]]
    kl = by_key(get_probe("divergence").figures(result))["divergence-kl"]
    assert kl.level is not None
    assert kl.level[0] == margins["kld_mean"]
    changed = {**result, "verdict": {**result["verdict"], "margins": {**margins, "answer_logprob": 0.5}}}
    diff = by_key(get_probe("needle").figures(changed))["needle-logprob-diff"]  # type: ignore[arg-type]
    assert sorted(y for y, _ in diff.levels) == [-0.5, 0.5]


def test_cells_not_measured_are_named_not_left_blank() -> None:
    """--until-decided stopped at 1,024 tokens: the later columns say why they are empty."""
    from kvprobe.views.figures import layout

    result = load(UNTIL)
    heat = by_key(get_probe("needle").figures(result))["needle-heatmap-q4_0"]
    assert heat.text is not None
    columns = heat.x_labels.index("2,048"), heat.x_labels.index("8,192")
    for row, text in zip(heat.values, heat.text, strict=True):
        for j in range(columns[0], columns[1] + 1):
            assert row[j] is None
            assert text[j] == "not measured: decided earlier"
        assert all(bool(t) == (v is None) for v, t in zip(row, text, strict=True))  # every blank said
    fits_its_frame(heat)
    assert layout(heat).texts  # the measured cells keep their numbers
    full = by_key(get_probe("needle").figures(load(SPLIT)))["needle-heatmap-q4_0"]
    assert full.text is None or all("not measured" not in t for row in full.text for t in row)


def test_one_configuration_one_style_on_every_figure() -> None:
    """q4_0 looks the same on every figure, whatever else the figure holds; the reference is
    black and dashed; real text is like no configuration."""
    from kvprobe.views.figures import REFERENCE_STYLE, TEXT_STYLE, config_style, figure_styles

    result = load(REPETITION)
    looks = set()
    for f in (f for p in all_probes() for f in p.figures(result)):
        if isinstance(f, LineFigure):
            styles = figure_styles([s.label for s in f.series], [s.reference for s in f.series])
            looks |= {(s.label, st) for s, st in zip(f.series, styles, strict=True)}
    by_label: dict[str, set[Any]] = {}
    for label, style in looks:
        by_label.setdefault(label, set()).add(style)
    assert all(len(s) == 1 for s in by_label.values()), by_label
    assert by_label["q4_0"] == {config_style("q4_0")}
    assert by_label["f16"] == {REFERENCE_STYLE}
    (text,) = (lbl for lbl in by_label if lbl.startswith("real text"))
    assert by_label[text] == {TEXT_STYLE}
    others = {(s.colour, s.line) for lbl, st in by_label.items() if lbl != text for s in st}
    assert (TEXT_STYLE.colour, TEXT_STYLE.line) not in others
    assert config_style("q4_0").name == "vermillion"
    assert config_style("k=q4_0,v=f16").colour == config_style("q4_0").colour
    assert config_style("k=q4_0,v=f16").marker != config_style("q4_0").marker


def test_a_verdict_looks_like_no_configuration() -> None:
    """Verdicts (the page's badges, a sweep's decision figures) in neutral greys that no
    configuration is drawn in, far from the reference's black and real text's grey, told apart by
    their fill, icon and word, their text readable (7:1 at least), their outline seen (3:1)."""
    from kvprobe.views.figures import (
        GLYPHS,
        GROUP_COLOURS,
        VERDICTS,
        colour_words,
        configuration_colours,
        contrast_ratio,
    )

    configs = configuration_colours()
    assert {"#D55E00", "#009E73", "#E69F00", "#000000", "#999999"} <= configs
    for status, look in VERDICTS.items():
        for colour in (look.fill, look.ink, look.edge):
            assert colour not in configs, (status, colour)
            assert colour[1:3] == colour[3:5] == colour[5:7], (status, colour)  # a grey: no hue at all
        assert contrast_ratio(look.ink, look.fill) >= 7, status
        assert contrast_ratio(look.fill, "#000000") >= 2, status  # not the reference's black
        assert contrast_ratio(look.fill, "#999999") >= 2, status  # nor real text's grey
    tested = [VERDICTS[s] for s in ("equivalent", "undecided", "worse")]
    assert len({(v.fill, v.dash) for v in tested}) == 3
    assert all(contrast_ratio(v.edge, "#FFFFFF") >= 3 for v in tested)  # an outline seen on the page
    icons = [v.icon for v in tested]
    assert len(set(icons)) == 3
    assert not set(icons) & {*GLYPHS.values(), "▲"}  # no configuration's marker, no onset
    assert all(GROUP_COLOURS[s] == VERDICTS[s].fill for s in ("equivalent", "undecided", "worse"))
    words = colour_words()
    assert (words["decision worse"], words["decision equivalent"]) == ("dark grey", "white")


def test_a_decision_heatmap_draws_each_verdict_in_its_look() -> None:
    """A sweep's decision grid: each cell in its verdict's fill, its text in the verdict's ink
    with its icon, the colour bar naming each verdict with its icon too."""
    import numpy as np

    from kvprobe.views.figures import VERDICTS, _draw_categories, _pyplot

    categories = ["equivalent", "undecided", "worse"]
    text = ["equivalent\n1,024", "worse\nnone", "undecided\n512"]
    grid = Heatmap("sweep-decisions-1024", "Decision at 1,024 tokens", "cache", "model",
                   ["q8_0", "q4_0", "q4_1", "q5_0"], ["m"], [[0.0, 2.0, 1.0, None]], "decision",
                   categories=categories, text=[[*text, "no result"]])  # fmt: skip
    plt = _pyplot()
    fig, ax = plt.subplots()
    texts = _draw_categories(ax, fig, grid, np.array(grid.values, dtype=float))
    hatched = [(p.get_xy(), p.get_hatch()) for p in ax.patches]
    cmap = ax.images[0].get_cmap()
    fills = ["#{:02X}{:02X}{:02X}".format(*(round(255 * c) for c in cmap(i)[:3])) for i in range(3)]
    bar = [t.get_text() for t in fig.axes[1].get_yticklabels()]
    plt.close(fig)
    assert fills == [VERDICTS[c].fill for c in categories]
    drawn = [(t.get_text(), t.get_color()) for t in texts]
    assert drawn == [
        (f"{VERDICTS[c].icon} {text[j]}", VERDICTS[c].ink)
        for j, c in enumerate(["equivalent", "worse", "undecided"])
    ] + [("no result", "#333333")]  # a cell without a result: said, in no verdict's look
    assert hatched == [((2.5, -0.5), "//")]
    assert bar == [f"{VERDICTS[c].icon} {c}" for c in categories]
