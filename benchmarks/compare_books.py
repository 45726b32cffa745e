"""Compare the executed chapters of two book builds: every glued value and every displayed output (as text;
figures as placeholders), code ignored. For changes that must not change a result:

    python benchmarks/compare_books.py OLD_ROOT NEW_ROOT     # each a checkout whose book/build.py has run

Chapters are those of OLD_ROOT's build; glue keys renamed since (``RENAMED``) are compared under their new
names; the checkouts' own paths are masked. Prints each difference, then a count.
"""
from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path

RENAMED = {"reference": "many", "base_measure_ref": "base_measure_many", "base_features_ref": "base_features_many",
           "base_few_over_reference": "base_few_over_many", "few_vs_reference": "few_vs_many",
           "reference_seeds": "many_steps_seeds"}  # 0.2's names for 0.1's glue keys


def outputs(path: Path) -> tuple[dict[str, str], str]:
    """(glued values by name, as JSON of their data; the text of every other output, stderr left out: stdout
    split by a progress bar in a cold run is one stream)."""
    glue, shown = {}, []
    for cell in json.loads(path.read_text())["cells"]:
        for o in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            data = o.get("data", {})
            name = o.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:
                glue[RENAMED.get(name, name)] = json.dumps({k: v for k, v in data.items() if "image" not in k},
                                                           sort_keys=True)
            elif o.get("output_type") in ("execute_result", "display_data") or o.get("name") == "stdout":
                text = data.get("text/plain") or o.get("text") or ""
                html = data.get("text/html", "")
                shown.append("<image>" if "image/png" in data else "".join(text) + "".join(html))
    return glue, "".join(shown)


def main(old: Path, new: Path) -> int:
    total = differ = 0
    for nb in sorted((old / "_build" / "src" / "notebooks").glob("*.ipynb")):
        g0, t0 = outputs(nb)
        g1, t1 = outputs(new / "_build" / "src" / "notebooks" / nb.name)
        for k in sorted(set(g0) | set(g1)):
            total += 1
            if g0.get(k) != g1.get(k):
                differ += 1
                print(f"{nb.stem}, glue {k}: {str(g0.get(k))[:200]} -> {str(g1.get(k))[:200]}")
        t0, t1 = t0.replace(str(old), "ROOT"), t1.replace(str(new), "ROOT")
        total += 1
        if t0 != t1:
            differ += 1
            print(f"{nb.stem}, outputs:")
            print("\n".join(list(difflib.unified_diff(t0.splitlines(), t1.splitlines(), lineterm=""))[:40]))
    print(f"{total} glued values and chapters' outputs compared, {differ} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()))
