"""`kvprobe compare`: two result files, paired where the items are the same; gates for CI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from kvprobe.cli.options import Subparsers
from kvprobe.infra.errors import UserError
from kvprobe.result.store import finite_json, load_result
from kvprobe.stats.compare import FailRule, compare
from kvprobe.views.html import comparison_page
from kvprobe.views.pictures import check_pictures, save_page
from kvprobe.views.terminal import print_comparison


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare two result files (paired where the items are the same)"
    )
    parser.add_argument("old", help="the earlier result (e.g. a saved baseline)")
    parser.add_argument("new", help="the result to judge")
    parser.add_argument(
        "--fail-on",
        action="append",
        default=[],
        metavar="METRIC:THRESHOLD",
        help="exit 1 on a significant change beyond THRESHOLD, e.g. accuracy:-0.05 or kld_mean:+0.01; or, "
        "with ±MARGIN (also +-MARGIN), unless the change is shown equivalent within it (TOST), e.g. "
        "answer_logprob:±0.25",
    )
    parser.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="compare configuration OLD of the old file with NEW of the new one, e.g. --map q8_0=q4_0",
    )
    parser.add_argument("--paired", action="store_true", help="refuse unless the items can be paired")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.add_argument(
        "--html", metavar="PAGE", help="also write an HTML page with old and new on the same axes"
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing --html page")


def cmd_compare(args: argparse.Namespace, console: Console, words: list[str]) -> int:
    rules = [FailRule.parse(text) for text in args.fail_on]
    check_pictures(args.html, None, [Path(args.old), Path(args.new)], force=args.force)
    old, new = load_result(Path(args.old)), load_result(Path(args.new))
    report = compare(old, new, require_paired=args.paired, maps=args.map)
    tested = {tuple(p) for p in report["test_configs_compared"]}
    for rule in rules:
        # A gate passes only on evidence: some row of its metric for a configuration under test.
        if not any(
            r["metric"] == rule.metric and (r["config_old"], r["config_new"]) in tested
            for r in report["rows"]
        ):
            left = report["unmatched"]
            raise UserError(
                f"--fail-on {rule} has nothing to judge: no test configuration "
                f"was compared on {rule.metric} (unmatched: old {', '.join(left['old']) or 'none'}; "
                f"new {', '.join(left['new']) or 'none'}); pair them with --map OLD=NEW"
            )
    failures = [(rule, row) for rule in rules for row in report["rows"] if rule.violated_by(row)]
    report["failures"] = [{"rule": str(r), **row} for r, row in failures]
    if args.html:
        text = comparison_page((Path(args.old).name, old), (Path(args.new).name, new), report)
        save_page(Path(args.html), text, console)
    if args.json:
        print(json.dumps(finite_json(report)[0], indent=1))  # strict JSON: a NaN row shows as null
    else:
        print_comparison(report, console)
    return 1 if failures else 0
