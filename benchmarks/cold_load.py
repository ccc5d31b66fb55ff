"""A first run's data load: `load_glint_file` with an empty decoded-data cache (decode, check, cache write).

    python benchmarks/cold_load.py FILE [TREE]

TREE is a checkout of glint-track to time (default: this one), so that two versions alternate in one shell:
    for i in 1 2; do for t in /tmp/before .; do python benchmarks/cold_load.py big.h5 $t; done; done
Files: benchmarks/_common.synthetic_file (e.g. 1,024 × 256²).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    tree = Path(sys.argv[2] if len(sys.argv) == 3 else Path(__file__).resolve().parents[1]).resolve()
    sys.path.insert(0, str(tree))
    from glint_track.data.glint_file import load_glint_file

    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        load_glint_file(sys.argv[1], Path(cache))
        print(f"{tree}: load (decode, check, cache) {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
