"""`python -m bench.volume_cache`: does a per-voxel soft-label cache pay for 3D segmentation KD,
or should the teacher run online? `bench.seg_cache`'s measurement (cache build, then cached,
no-KD and online epochs interleaved) on `jobs/volumes.yaml`'s shape: phantoms of 48x48x24
voxels, 32x32x16 patches, batch 4, teacher `unet3d` (4.8 M parameters), student
`unet3d-c4.8.16.32-s2.2.2-r1` (38 k). One JSON object on stdout, progress on stderr.
"""

from __future__ import annotations

import json
import sys

from bench.common import REPO
from bench.seg_cache import measure

JOB = REPO / "jobs" / "volumes.yaml"
TEACHER, STUDENT = "unet3d", "unet3d-c4.8.16.32-s2.2.2-r1"

if __name__ == "__main__":
    json.dump(measure(JOB, TEACHER, STUDENT), sys.stdout, indent=2)
    print()
