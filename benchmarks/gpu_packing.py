"""Trials packed on one GPU: N concurrent trial processes vs one, in trial-epochs per second.

What Ray's fractional GPUs (``resources.gpus: 0.25``) do on a node, without Ray: launch N
python processes at once, each running the same short trial (``trainables.trial.run_trial``
on a PCam subset, default config on the device: GPU-resident uint8 data, bf16,
channels_last), and sample the GPU's utilisation with ``nvidia-smi`` meanwhile.

Study throughput = N * epochs / wall time of the group (process start, data load from the
decode cache, model build and all epochs counted, as a study pays them too); the epoch-only
rate (N * epochs / the slowest process's summed epoch seconds) is reported beside it.

Usage:
    python benchmarks/gpu_packing.py --procs 1 4 --json out.json
    python benchmarks/gpu_packing.py --device cpu --procs 1 2 --images 256 --epochs 1    # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PCAM_SUBSET = "pcam/pcam_gpu_subset_96px.zip"


def worker(args: argparse.Namespace) -> None:
    """One trial process: load, train, print one JSON line."""
    started = time.perf_counter()
    from trainables.config import DataConfig, TrialConfig
    from trainables.data import load_dataset
    from trainables.trial import run_trial

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_dataset(DataConfig(source=args.source))
    fraction = min(1.0, args.images / len(data.splits["train"]))
    config = TrialConfig(backbone=args.backbone, pretrained=False, batch_size=args.batch_size, epochs=args.epochs,
                         crop_size=args.crop, aug_flip=True, aug_shift=(96 - args.crop) // 2, device=args.device,
                         train_fraction=fraction, seed=0)
    history = run_trial(config, data)
    print(json.dumps({"pid": os.getpid(), "seconds": time.perf_counter() - started,
                      "epoch_seconds": sum(h["epoch_seconds"] for h in history),
                      "images_per_second": statistics.median(h["images_per_second"] for h in history),
                      "val_auc": history[-1]["val_auc"], "train_loss": history[-1]["train_loss"]}), flush=True)


class GpuSampler:
    """Polls ``nvidia-smi`` for utilisation (%) and memory used (MiB) until stopped."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.util, self.memory = interval, [], []
        self.available = shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits", "-i", "0"],
                                     capture_output=True, text=True, timeout=5).stdout.strip().splitlines()[0]
                util, memory = (float(v) for v in out.split(","))
                self.util.append(util)
                self.memory.append(memory)
            except Exception:  # noqa: BLE001 - sampling is best effort
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> "GpuSampler":
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.available:
            self._thread.join()

    def summary(self) -> dict:
        if not self.util:
            return {"gpu_util_mean": None, "gpu_util_max": None, "gpu_mem_max_mib": None, "samples": 0}
        return {"gpu_util_mean": round(statistics.mean(self.util), 1), "gpu_util_max": max(self.util),
                "gpu_mem_max_mib": max(self.memory), "samples": len(self.util)}


def run_group(n: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--source", args.source, "--backbone", args.backbone,
           "--images", str(args.images), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           "--crop", str(args.crop), "--device", args.device]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    with GpuSampler() as sampler:
        started = time.perf_counter()
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(n)]
        outputs = [p.communicate() for p in procs]
        wall = time.perf_counter() - started
    workers = []
    for proc, (out, err) in zip(procs, outputs):
        if proc.returncode != 0:
            raise RuntimeError(f"trial process failed (rc {proc.returncode}):\n{err[-3000:]}")
        workers.append(json.loads(out.strip().splitlines()[-1]))
    slowest_epochs = max(w["epoch_seconds"] for w in workers)
    return {"procs": n, "wall_seconds": round(wall, 2),
            "trial_epochs_per_second": round(n * args.epochs / wall, 4),
            "epoch_only_trial_epochs_per_second": round(n * args.epochs / slowest_epochs, 4),
            "images_per_second_per_trial": round(statistics.median(w["images_per_second"] for w in workers), 1),
            "val_auc": [round(w["val_auc"], 4) for w in workers], **sampler.summary()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", default=PCAM_SUBSET, help="data source (relative: under $MEDTUNE_DATA)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--images", type=int, default=4096, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--crop", type=int, default=80)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    # Fill the decode cache once, so no group pays the first decode.
    from trainables.config import DataConfig
    from trainables.data import load_dataset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_dataset(DataConfig(source=args.source))
    groups = []
    for n in args.procs:
        groups.append(run_group(n, args))
        print(json.dumps(groups[-1]), flush=True)
    base = groups[0]["trial_epochs_per_second"]
    result = {"backbone": args.backbone, "images": args.images, "epochs": args.epochs, "batch_size": args.batch_size,
              "crop": args.crop, "device": args.device, "groups": groups,
              "ratio": {str(g["procs"]): round(g["trial_epochs_per_second"] / base, 2) for g in groups},
              "target": "4 trials per GPU >= 2x the study throughput of 1"}
    print(json.dumps(result["ratio"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
