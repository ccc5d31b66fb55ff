"""Facts several layers share, in a module that imports nothing heavy (no torch, numpy, h5py or MLflow).

The command line shows these in `--help` and checks arguments against them before it imports anything that
trains or infers, so `glint-track --help` and a mistyped option answer at once; the modules that use them take
them from here (one constant per fact).
"""

from __future__ import annotations

import os
from pathlib import Path

#: Input pixels per heat-map pixel: the UNet's decoder stops two levels above the input.
OUTPUT_STRIDE = 4
#: Image sides must divide by this: the UNet's four 2× poolings.
SIZE_MULTIPLE = 16
#: Largest image side `pack --img-size`, `predict --input-size` and a checkpoint's trained size may have (memory grows
#: with its square).
MAX_SIDE = 8192

#: A channel's peak probability at or above this is a detected glint.
DEFAULT_THRESHOLD = 0.3
#: Input pixels between a detected glint and its annotation for it to count as found.
DEFAULT_MATCH_RADIUS = 3.0

#: The research packer's heat-maps: sigma = max(SIGMA_MIN, radius · SIGMA_SCALE).
SIGMA_SCALE = 1.2
SIGMA_MIN = 1.5
#: HDF5 compressions `pack` and `synth` can write.
COMPRESSIONS = ("gzip", "lzf", "none")
#: Bit depths a sensor may deliver (`synth --bits`); the HDF5 file always holds 8 bits, as `pack` makes them.
SENSOR_BITS = (8, 10, 12, 16)

#: Where a run's local copy (checkpoints, training.log) goes without --output-dir: runs/<run id>.
RUNS_DIR = Path("runs")

#: What runs the model for `predict`.
BACKENDS = ("torch", "onnx")


def default_cache_dir() -> Path:
    """Where decoded data files are cached: $XDG_CACHE_HOME/glint-track, else ~/.cache/glint-track."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "glint-track"


#: The key of a labelme JSON that `predict --labelme-out` wrote: what the model predicted there (labelme keeps keys it
#: does not know when it saves), so that `pack` can measure how far the annotator moved each point.
PRELABEL_KEY = "glint_track"
#: The attributes of a file `pack` wrote naming the labelme folder it came from (absolute) and its JSON files' digest:
#: a run's dataset input shows them, so a data version leads back to its annotations.
PACKED_FROM, PACKED_DIGEST = "labelme_folder", "labelme_digest"
#: The COCO keypoints file `pack --coco` read, and its SHA-256.
COCO_FROM, COCO_DIGEST = "coco_file", "coco_digest"
