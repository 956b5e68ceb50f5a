"""Are two result files the same measurement? Loads both through kvprobe's loader (so an older
schema is migrated first) and compares items, text items, summary rows, verdict and the
divergence section exactly. Used to show that a refactoring changed no number:

    python benchmarks/same_items.py BEFORE.json AFTER.json    # exit 1 if any field differs
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kvprobe.result.store import Result

FIELDS = ("items", "text_items", "summary", "verdict", "divergence")


def main(old_path: str, new_path: str) -> int:
    old, new = Result.load(Path(old_path)), Result.load(Path(new_path))
    print(f"schema versions read: {old.read_version} and {new.read_version}")
    differ = 0
    written_old, written_new = old.doc.written(), new.doc.written()  # plain JSON, as the files hold it
    for field in FIELDS:
        a, b = written_old.get(field), written_new.get(field)
        same = json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
        size = "-" if a is None else len(a)
        print(f"{field:11s} {'identical' if same else 'DIFFERENT'} ({size} entries)")
        differ += not same
    return 1 if differ else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
