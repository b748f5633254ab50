"""``benchmarks/throughput.py`` on the PCam subset that travels to a GPU machine.

throughput.py reads the full 119 MB PCam zip, which does not fit the 64 MiB a device
machine receives; this runs it unchanged on ``data/pcam/pcam_gpu_subset_96px.zip``
(written by ``benchmarks/gpu_data.py``). Every argument goes to throughput.py, e.g.
    python benchmarks/gpu_throughput.py --device cuda --models resnet18 tf_efficientnet_lite0 --json t.json
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import throughput  # noqa: E402

throughput.PCAM = os.environ.get("GPU_CHECK_PCAM", "pcam/pcam_gpu_subset_96px.zip")

if __name__ == "__main__":
    throughput.main()
