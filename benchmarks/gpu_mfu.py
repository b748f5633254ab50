"""Model FLOP utilisation of the trainable's training step (default: resnet50, 96 px, bf16).

FLOPs of one training step (forward + backward) are counted by
``torch.utils.flop_counter.FlopCounterMode`` on the real step (matmuls and convolutions;
elementwise ops are not counted, as is usual for MFU), then divided by the measured step
time of ``trainables.trial.train_step`` on one batch made once (GPU-resident, bf16
autocast, channels_last: the trial's default on CUDA), and set against the GPU's dense
bf16 peak. The peak is looked up by device name (H200 / H100 SXM: 989 TFLOP/s dense bf16,
NVIDIA's datasheet figure without sparsity) or given with ``--peak-tflops``.

Usage:
    python benchmarks/gpu_mfu.py --json mfu.json
    python benchmarks/gpu_mfu.py --device cpu --batch-size 4 --steps 1 --warmup 1   # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainables.augment import prepare_batch  # noqa: E402
from trainables.config import TrialConfig  # noqa: E402
from trainables.data import ImageDataset  # noqa: E402
from trainables.trial import build_trial, train_step  # noqa: E402

PEAKS_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}  # dense bf16


def synthetic_dataset(n: int, size: int) -> ImageDataset:
    """Random uint8 RGB images with two classes: the step's cost does not depend on content."""
    rng = np.random.default_rng(0)
    train = n - n // 4
    return ImageDataset(images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                        labels=(np.arange(n) % 2).astype(np.int64),
                        splits={"train": np.arange(train), "val": np.arange(train, n), "test": np.arange(0)},
                        class_names=["0", "1"], groups=None, fingerprint="synthetic", skipped={}, source="synthetic")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the device (default: by name)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from torch.utils.flop_counter import FlopCounterMode

    data = synthetic_dataset(max(2 * args.batch_size, 8), args.size)
    config = TrialConfig(backbone=args.backbone, pretrained=False, batch_size=args.batch_size, epochs=1,
                         device=args.device, precision=args.precision, seed=0)
    state = build_trial(config, data)
    images = torch.from_numpy(data.images).to(state.device)
    idx = torch.arange(args.batch_size, device=state.device)
    x = prepare_batch(images[idx], state.input_spec, channels_last=state.compute.channels_last)
    y = torch.from_numpy(data.labels[: args.batch_size]).to(state.device)
    state.model.train()
    counter = FlopCounterMode(display=False)
    with counter:
        train_step(state, config, x, y)
    flops = counter.get_total_flops()
    sync = torch.cuda.synchronize if state.device.type == "cuda" else (lambda: None)
    for step in range(args.warmup):
        train_step(state, config, x, y, step)
    sync()
    started = time.perf_counter()
    for step in range(args.steps):
        train_step(state, config, x, y, step)
    sync()
    step_s = (time.perf_counter() - started) / args.steps
    name = torch.cuda.get_device_name(0) if state.device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAKS_TFLOPS.items() if k in name), None)
    achieved = flops / step_s / 1e12
    result = {"backbone": args.backbone, "size": args.size, "batch_size": args.batch_size, "device": name,
              "compute": {"bf16": state.compute.bf16, "channels_last": state.compute.channels_last},
              "flops_per_step": flops, "gflops_per_image": round(flops / args.batch_size / 1e9, 3),
              "step_seconds": round(step_s, 5), "images_per_second": round(args.batch_size / step_s, 1),
              "achieved_tflops": round(achieved, 2), "peak_tflops_assumed": peak,
              "mfu": round(achieved / peak, 4) if peak else None, "target": "MFU >= 0.30 (resnet50, 96 px, bf16)"}
    print(json.dumps(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
