"""Break each feature once and check that the test written for it fails; then restore the file.

    python benchmarks/break_once.py [WORDS...]      # only the cases whose name has one of WORDS

Each case replaces one piece of code with a broken one (a range check skipped, a pairing
changed, a flag dropped, ...), runs the test that should catch it, and says FAILS (good) or
PASSES (bad). The files are restored whatever happens; run it on a clean checkout."""

# ruff: noqa: E501 - each case quotes the code it replaces as it stands, line for line
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = [
    (
        "growth called from the interval's upper end",
        "kvprobe/stats/shape.py",
        '            p < GROWTH_ALPHA and t["growth_ci"] is not None and t["growth_ci"][0] > 0',
        '            t["growth_ci"] is not None and t["growth_ci"][1] > 0',
        "tests/stats/test_shape.py::test_flat_losses_at_the_margin_are_called_flat",
    ),
    (
        "the 4K+ rule judged by the first checkpoint again",
        "kvprobe/stats/shape.py",
        "    if kind == GROWS and fine_short:",
        "    if kind == GROWS and not fine_short:",
        "tests/stats/test_shape.py::test_a_loss_that_grows_after_an_equivalent_start",
    ),
    (
        "a whole-document label on the 99th percentile",
        "kvprobe/probes/divergence/probe.py",
        "        tail = f\"; KL 99.9th percentile ({scope}) {figure(pooled[(cid, 'kld_p999')])}\" if (",
        "        tail = f\"; KL 99.9th percentile ({scope}) {figure(pooled[(cid, 'kld_p99')])}\" if (",
        "tests/views/test_numbers.py",
    ),
    (
        "the README's block from another width",
        "docs/readme_block.py",
        'WIDTH = "100"',
        'WIDTH = "120"',
        "tests/infra/test_readme_block.py::test_the_readme_block_is_the_reports_output",
    ),
    (
        "the default scenario from 1,024 again",
        "scenarios/default.toml",
        "first_checkpoint = 256",
        "first_checkpoint = 1024",
        "tests/plan/test_scenario.py::test_the_default_scenario_measures_short_lengths",
    ),
    (
        "watching stops configurations",
        "kvprobe/run/until_decided.py",
        "        return self.watch or step < self.limits.get(config, len(self.checkpoints))",
        "        return step < self.limits.get(config, len(self.checkpoints))",
        "tests/run/test_decided_early.py",
    ),
    (
        "ray: joins the last cluster ray start recorded",
        "kvprobe/sweep/ray_executor.py",
        '            address=address or "local",',
        "            address=address,",
        "tests/sweep/test_sweep.py::test_without_an_address_ray_starts_afresh_whatever_ray_start_left_behind",
    ),
    (
        "scenario range checks",
        "kvprobe/plan/scenario.py",
        '    if not low <= value <= high:\n        raise bad(source, key, f"must be between {low:,} and {high:,}, got {value:,}")',
        "    return",
        "tests/stats/test_properties.py::test_a_valid_scenario_file_holds_what_it_says_and_one_bad_value_is_named",
    ),
    (
        "the loader checks nothing",
        "kvprobe/result/store.py",
        "        validate(doc, path, shown=shown)",
        "        pass",
        "tests/stats/test_properties.py::test_a_mutated_item_is_refused_by_the_loader_or_compares_as_before",
    ),
    (
        "unknown options named by the root parser",
        "kvprobe/cli/__init__.py",
        "        args = parse(build_parser(), argv)",
        "        args = build_parser().parse_args(argv)",
        "tests/cli/test_bad_input.py::test_every_command_refuses_an_unknown_option_in_one_line",
    ),
    (
        "the verdict's words change",
        "kvprobe/stats/decision.py",
        "keep the {cid} cache ({rec['flags']}): no cheaper configuration was shown ",
        "keep the {cid} cache ({rec['flags']}): no cheaper configuration was ",
        "tests/views/test_report.py::test_every_example_is_shown_with_the_verdict_its_items_give",
    ),
    (
        "flags without -fa on",
        "kvprobe/stats/decision.py",
        '    return f"-ctk {type_k} -ctv {type_v} -fa on"',
        '    return f"-ctk {type_k} -ctv {type_v}"',
        "tests/views/test_report.py::test_the_recommendation_comes_first_with_numbers",
    ),
    (
        "a paired metric whose field items lack",
        "kvprobe/probes/repetition/probe.py",
        'lower_is_worse=False, field="seq_rep_4"',
        'lower_is_worse=False, field="seq_rep_5"',
        "tests/api/test_metrics.py::test_the_paired_metrics_are_the_ones_the_verdict_pairs_on_real_items",
    ),
    (
        "memory: logits once, not twice",
        "kvprobe/weights/memory.py",
        '(2 * chunk * f["n_vocab"] * 4 if all_logits',
        '(chunk * f["n_vocab"] * 4 if all_logits',
        "tests/weights/test_memory.py",
    ),
    (
        "weights vs KV: effects swapped",
        "kvprobe/stats/weights_vs_kv.py",
        '    if kv and w:\n        fault = "both"\n    elif kv:\n        fault = "kv"\n    elif w:\n        fault = "weights"',
        '    if kv and w:\n        fault = "both"\n    elif kv:\n        fault = "weights"\n    elif w:\n        fault = "kv"',
        "tests/stats/test_weights_vs_kv.py",
    ),
    (
        "needles asked before they end",
        "kvprobe/probes/needle/plan.py",
        "        if n.end <= length",
        "        if n.position <= length",
        "tests/probes/test_needle_probe.py",
    ),
    (
        "first_difference against any configuration",
        "kvprobe/probes/repetition/probe.py",
        '            if it["probe"] == "repetition" and it["config"] == self.baseline\n',
        '            if it["probe"] == "repetition"\n',
        "tests/probes/test_repetition_probe.py",
    ),
    (
        "registry: plug-ins before built-ins",
        "kvprobe/api/registry.py",
        "key=lambda p: (rank.get(p.name, len(rank)), registered_now.index(p))",
        "key=lambda p: (rank.get(p.name, -1), registered_now.index(p))",
        "tests/api/test_registry.py",
    ),
    (
        "journal: duplicate units taken",
        "kvprobe/result/journal.py",
        "        if unit.key in seen:",
        "        if False:",
        "tests/result/test_journal.py",
    ),
    (
        "terminal: KV memory at the training context shown as at the run's",
        "kvprobe/views/decision.py",
        '            _mib(r["kv_bytes"]), saves,',
        '            _mib(r["kv_bytes_train"]), saves,',
        "tests/views/test_terminal_views.py",
    ),
    (
        "scatter labels left where they fall",
        "kvprobe/views/figures.py",
        "        placed.append(put(label, best[1] if best is not None else _SPOTS[0]))",
        "        placed.append(put(label, _SPOTS[0]))",
        "tests/views/test_figures.py::test_scatter_labels_overlap_nothing_and_stay_inside_the_axes",
    ),
    (
        "symlog back",
        "kvprobe/views/figures.py",
        '        ax.set_yscale("log")',
        '        ax.set_yscale("symlog", linthresh=1e-3); floor = -floor',
        "tests/views/test_figures.py::test_a_log_axis_invents_no_region_below_zero_for_the_reference",
    ),
    (
        "heatmap: colour bar labels past the edge (tight_layout)",
        "kvprobe/views/figures.py",
        '        engine = "constrained" if isinstance(figure, Heatmap) else None',
        "        engine = None",
        "tests/views/test_figures.py::test_every_sweep_examples_figures_fit_their_frame",
    ),
    (
        "heatmap: cell texts left overlapping",
        "kvprobe/views/figures.py",
        "                labels = _fit_cell_texts(fig, labels)",
        "                pass",
        "tests/views/test_figures.py::test_a_large_sweep_grid_keeps_its_texts_apart_and_inside",
    ),
    (
        "sweep manifest: a cell's result file not where it says",
        "kvprobe/sweep/manifest.py",
        "    out: str  # relative to the sweep folder",
        "    out: str  # relative to the sweep folder\n    def __post_init__(self) -> None: self.out = 'cells/' + self.out",
        "tests/result/test_result_schema.py::test_every_committed_sweep_loads_and_its_cells_keep_the_schema",
    ),
    (
        "ray: an address where nothing answers handed to ray.init",
        "kvprobe/sweep/ray_executor.py",
        "            check_reachable(_resolved(ray, address), address)",
        "            pass",
        "tests/sweep/test_sweep.py::test_an_address_where_nothing_answers_is_one_line_within_seconds",
    ),
    (
        "sweep: finished cells run again",
        "kvprobe/sweep/drive.py",
        '        if state == "done":\n            record.status = "done"',
        '        if False:\n            record.status = "done"',
        "tests/sweep/test_sweep.py::test_a_killed_sweep_resumes_to_identical_results",
    ),
    (
        "sweep: a retried cell runs again after it had finished",
        "kvprobe/sweep/cell_run.py",
        '    if state == "done":\n        return CellOutcome(cell_id, DONE, 0.0, host, summary=decision_summary(out))',
        "",
        "tests/sweep/test_sweep.py::test_a_cell_whose_result_is_complete_is_not_run_again",
    ),
    (
        "sweep: a cut cell starts again instead of resuming",
        "kvprobe/sweep/cell_run.py",
        '    resumed = state == "partial"',
        "    resumed = False",
        "tests/sweep/test_sweep.py::test_a_killed_sweep_resumes_to_identical_results",
    ),
]


def main(only: list[str]) -> None:
    for name, file, old, new, test in CASES:
        if only and not any(o in name for o in only):
            continue
        path = ROOT / file
        text = path.read_text()
        assert old in text, (name, old)
        path.write_text(text.replace(old, new, 1))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=1200,
                check=False,
            )
            last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-200:]
            print(
                f"{'FAILS (good)' if proc.returncode else 'PASSES (bad)'}: {name}: {test}: {last}", flush=True
            )
        finally:
            path.write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])
