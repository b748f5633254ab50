"""Training images/s: medtune's trainable vs a conventional PIL + DataLoader pipeline, side by side.

Same model (built by ``trainables.models.build_model`` from one config, same seed), same
optimizer, same PCam 96x96 images, batch size, crop and augmentation (random 80 px crop,
horizontal and vertical flips, normalisation), same number of images per epoch. Only
the way batches are made and fed differs:

- **conventional**: a torchvision-style ``Dataset`` that opens each JPEG with PIL and
  applies per-sample torchvision transforms (``RandomCrop``, ``RandomHorizontalFlip``,
  ``RandomVerticalFlip``, ``ToTensor``, ``Normalize``), a ``DataLoader`` with workers,
  and the plain fp32 training loop. It gets its best configuration of torch threads and
  DataLoader workers, picked by a calibration round in the same run.
- **medtune**: the trainable's own code (``trainables.trial.build_trial`` +
  ``train_epoch``): images decoded once into a uint8 array (the on-disk cache), batches
  gathered by index and augmented as tensor ops in one call, the model in channels_last.
  Three variants isolate where the speed comes from: ``same compute`` (fp32, NCHW: the
  data pipeline alone), ``default`` (what a trial does unless told otherwise) and
  ``precision=bf16`` (opt-in bf16 autocast on CPUs with AMX).

Arms alternate round by round (order rotated), each after a warm-up; the ratio is the
median medtune images/s over the median conventional images/s. On 2 cores, run it alone
(``flock /tmp/medtune-cpu.lock ...``): OpenMP with 2 threads collapses when another
process competes for the cores, which is also why the conventional pipeline's thread and
worker counts are calibrated rather than guessed.

Usage:
    python benchmarks/throughput.py --write-docs
    python benchmarks/throughput.py --models cnn3 --images 1024 --rounds 2      # quick look
    python benchmarks/throughput.py --device cuda --models resnet18 tf_efficientnet_lite0 --images 8192
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, load_average, machine, table, write_section  # noqa: E402

from trainables.augment import prepare_batch  # noqa: E402
from trainables.config import DataConfig, TrialConfig  # noqa: E402
from trainables.data import ImageDataset, load_dataset  # noqa: E402
from trainables.models import build_model  # noqa: E402
from trainables.optim import build_optimizer  # noqa: E402
from trainables.trial import (  # noqa: E402
    ComputeFormat,
    build_trial,
    images_tensor,
    train_epoch,
    train_step,
)

PCAM = "pcam/pcam_26k_96px.zip"
TARGETS = {"cnn3": 2.0, "tf_efficientnet_lite0": 1.2}


# ---------------------------------------------------------------- conventional pipeline


class JpegFolder(Dataset):
    """The torchvision ``ImageFolder`` pattern: one file per image, decoded per sample."""

    def __init__(self, files: list[Path], labels: np.ndarray, transform: Callable) -> None:
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.files[index]) as image:
            return self.transform(image.convert("RGB")), int(self.labels[index])


def conventional_transform(crop: int, mean: tuple[float, ...], std: tuple[float, ...], train: bool = True):
    """Per-sample torchvision transforms equal to the trainable's batched ones."""
    from torchvision import transforms as T

    steps = [T.RandomCrop(crop), T.RandomHorizontalFlip(), T.RandomVerticalFlip()] if train else [T.CenterCrop(crop)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


def extract_jpegs(data: ImageDataset, indices: np.ndarray, directory: Path) -> list[Path]:
    """The source JPEGs of ``indices`` as files on disk, as a conventional pipeline reads them."""
    with zipfile.ZipFile(data.source) as archive:
        top = archive.namelist()[0].split("/")[0]
        files = []
        for i in indices:
            member = f"{top}/{data.paths[i]}"
            target = directory / member
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(member))
            files.append(target)
    return files


# ---------------------------------------------------------------- arms


@dataclass
class Arm:
    """One way of training: its label, torch threads, and a function running one epoch."""

    name: str
    threads: int
    epoch: Callable[[int | None], int]
    device: torch.device
    rates: list[float] = field(default_factory=list)

    def measure(self, limit: int | None = None) -> float:
        """Images/s of one epoch (``limit`` batches only, for warm-up and calibration)."""
        torch.set_num_threads(self.threads)
        started = time.perf_counter()
        seen = self.epoch(limit)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return seen / (time.perf_counter() - started)


def trial_config(model: str, args: argparse.Namespace, precision: str = "auto") -> TrialConfig:
    shift = (96 - args.crop) // 2  # offsets up to +-shift around the centre = any position: RandomCrop
    return TrialConfig(backbone=model, pretrained=False, batch_size=args.batch_size, epochs=1, crop_size=args.crop,
                       aug_flip=True, aug_shift=shift, device=args.device, precision=precision, seed=0)


def medtune_arm(name: str, config: TrialConfig, data: ImageDataset, indices: np.ndarray, threads: int,
                compute: ComputeFormat | None = None) -> Arm:
    """The trainable's own ``train_epoch`` on ``indices`` (``compute`` overrides its format)."""
    torch.set_num_threads(threads)
    state = build_trial(config, data)
    if compute is not None:
        state.compute = compute
        if not compute.channels_last:
            state.model = state.model.to(memory_format=torch.contiguous_format)
    images = images_tensor(data, state.device)

    def epoch(limit: int | None) -> int:
        state.train_idx = indices if limit is None else indices[: limit * config.batch_size]
        return train_epoch(state, config, images, data)[1]

    return Arm(name, threads, epoch, state.device)


CEILING = "model step alone (no data pipeline: the ceiling)"


def ceiling_arm(config: TrialConfig, data: ImageDataset, indices: np.ndarray, threads: int) -> Arm:
    """The default trainable's own ``train_step`` on one batch made once.

    No decoding, gathering or augmentation at all: the images/s no data pipeline can beat
    with this model, precision and memory format. Its ratio to the conventional pipeline is
    the most that any pipeline work can win on this machine.
    """
    torch.set_num_threads(threads)
    state = build_trial(config, data)
    images = images_tensor(data, state.device)
    first = torch.from_numpy(indices[: config.batch_size])
    x = prepare_batch(images[first].to(state.device), state.input_spec, state.augment, state.generator,
                      channels_last=state.compute.channels_last)
    y = torch.from_numpy(data.labels[first]).to(state.device)

    def epoch(limit: int | None) -> int:
        state.model.train()
        steps = len(indices) // config.batch_size if limit is None else limit
        for step in range(steps):
            train_step(state, config, x, y, step)
        return steps * config.batch_size

    return Arm(CEILING, threads, epoch, state.device)


def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); without, bf16 is emulated."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def conventional_arm(config: TrialConfig, files: list[Path], labels: np.ndarray, threads: int, workers: int) -> Arm:
    """Per-sample PIL decode + torchvision transforms + DataLoader + the plain fp32 loop."""
    torch.set_num_threads(threads)
    device = torch.device(config.device if config.device != "auto" else "cpu")
    torch.manual_seed(config.seed)
    model = build_model(config, num_classes=2, in_chans=3).to(device)
    optimizer = build_optimizer(model, model.stage_of(), model.num_stages, config)
    transform = conventional_transform(config.crop_size, tuple(model.data_config["mean"]), tuple(model.data_config["std"]))
    loader = DataLoader(JpegFolder(files, labels, transform), batch_size=config.batch_size, shuffle=True,
                        num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(0))

    def epoch(limit: int | None) -> int:
        model.train()
        seen = 0
        for step, (x, y) in enumerate(loader):
            if limit is not None and step >= limit:
                break
            if len(y) < 2:
                continue
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(y)
        return seen

    return Arm(f"conventional T={threads} W={workers}", threads, epoch, device)


# ---------------------------------------------------------------- measurement


def run_model(model: str, args: argparse.Namespace, data: ImageDataset, tmp: Path) -> dict:
    rng = np.random.default_rng(0)
    indices = np.sort(rng.permutation(data.splits["train"])[: args.images])
    files = extract_jpegs(data, indices, tmp / model)
    labels = data.labels[indices]
    config = trial_config(model, args)
    cuda = args.device == "cuda"

    # 1. Calibrate the conventional pipeline: every (threads, workers) pair, whole epochs of a
    #    smaller set (so each epoch's worker start-up and prefetch ramp are counted, as below).
    calibration = {}
    few = args.calibration_images
    for threads, workers in args.baseline_configs:
        arm = conventional_arm(config, files[:few], labels[:few], threads, workers)
        arm.measure()  # warm-up: workers start, allocator and oneDNN caches fill
        calibration[arm.name] = arm.measure()
        print(f"  calibrate {model} {arm.name}: {calibration[arm.name]:.1f} img/s", flush=True)
        del arm
    best = max(calibration, key=calibration.get)
    threads, workers = (int(part.split("=")[1]) for part in best.split()[1:])

    # 2. The arms, measured alternately.
    arms = [conventional_arm(config, files, labels, threads, workers)]
    main_threads = args.threads
    if cuda:
        arms.append(medtune_arm("medtune fp32 NCHW (same compute)", trial_config(model, args, "fp32"), data, indices,
                                main_threads, ComputeFormat(channels_last=False, bf16=False)))
        arms.append(medtune_arm("medtune default (bf16, channels_last)", config, data, indices, main_threads))
    else:
        arms.append(medtune_arm("medtune fp32 NCHW (same compute)", config, data, indices, main_threads,
                                ComputeFormat(channels_last=False, bf16=False)))
        arms.append(medtune_arm("medtune default (fp32, channels_last)", config, data, indices, main_threads))
        if native_bf16():  # emulated bf16 is several times slower: not worth a measurement
            arms.append(medtune_arm("medtune precision=bf16", trial_config(model, args, "bf16"), data, indices,
                                    main_threads))
    arms.append(ceiling_arm(config, data, indices, main_threads))
    for arm in arms:
        arm.measure(3)
    for round_ in range(args.rounds):
        shift = round_ % len(arms)
        for arm in arms[shift:] + arms[:shift]:
            arm.rates.append(arm.measure())
            print(f"  {time.strftime('%H:%M:%S')} round {round_ + 1} {model} {arm.name}: {arm.rates[-1]:.1f} img/s", flush=True)
    base = statistics.median(arms[0].rates)
    result = {"model": model, "images": len(indices), "calibration": calibration, "baseline": arms[0].name,
              "arms": {}}
    for arm in arms:
        rate = statistics.median(arm.rates)
        result["arms"][arm.name] = {"img_s": round(rate, 1), "ratio": round(rate / base, 2),
                                    "rounds": [round(r, 1) for r in arm.rates]}
    return result


def verdicts(results: list[dict]) -> list[str]:
    """One line per model with a target: the default trainable's ratio, and the best opt-in one."""
    lines = []
    for res in results:
        target = TARGETS.get(res["model"])
        if not target:
            continue
        arms = res["arms"]
        default = next(arm for name, arm in arms.items() if "default" in name)
        arms = {name: arm for name, arm in arms.items() if name != CEILING}
        line = (f"- `{res['model']}`, target >= {target:g}x: default trainable **{default['ratio']:.2f}x** "
                f"({'met' if default['ratio'] >= target else 'NOT met'})")
        best_name, best = max(arms.items(), key=lambda item: item[1]["ratio"])
        if best is not default:
            line += f"; {best_name.removeprefix('medtune ')} **{best['ratio']:.2f}x** ({'met' if best['ratio'] >= target else 'NOT met'})"
        ceiling = res["arms"].get(CEILING)
        if ceiling:
            line += f"; the model step alone, with no data pipeline at all: {ceiling['ratio']:.2f}x"
        lines.append(line)
    return lines


def explain(results: list[dict]) -> str:
    """Where the time goes, from the measured ceiling: what pipeline work can and cannot win."""
    parts = []
    for res in results:
        arms = res["arms"]
        ceiling, default = arms.get(CEILING), next((a for n, a in arms.items() if "default" in n), None)
        if not ceiling or not default:
            continue
        per_image_ms = 1000 / ceiling["img_s"]
        base_ms = 1000 / (ceiling["img_s"] / ceiling["ratio"])
        parts.append(
            f"`{res['model']}`: the model step alone costs {per_image_ms:.2f} ms per image and the conventional "
            f"pipeline {base_ms:.2f} ms, so its data side costs at most {base_ms - per_image_ms:.2f} ms per image "
            f"({(base_ms - per_image_ms) / base_ms:.0%} of its time); the default trainable reaches "
            f"{default['img_s'] / ceiling['img_s']:.0%} of the ceiling.")
    if not parts:
        return ""
    return ("Where the time goes (the ceiling row trains on one batch made once, so it is the fastest any data "
            "pipeline could feed this model with this arithmetic): " + " ".join(parts) + " A target above the "
            "ceiling's ratio cannot be met by the pipeline: on a CPU the model's arithmetic dominates, and only "
            "faster arithmetic moves it (bf16 on CPUs with AMX or AVX512-BF16, `precision: bf16`; on a GPU the "
            "model step takes microseconds per image and the per-sample pipeline is the whole cost). bf16 is "
            "measured only where the CPU has native bf16 (" + ("yes" if native_bf16() else "no") + " here).")


def markdown(results: list[dict], args: argparse.Namespace, loads: tuple[str, str], setup: str) -> str:
    rows = []
    for res in results:
        for name, arm in res["arms"].items():
            rows.append([res["model"], name, arm["img_s"], f"{arm['ratio']:.2f}x", ", ".join(map(str, arm["rounds"]))])
    calib = [[res["model"], name, f"{rate:.1f}"] for res in results for name, rate in res["calibration"].items()]
    return f"""## Training throughput: trainable vs conventional pipeline (issue E.1)

{setup}

{table(["model", "pipeline", "images/s (median)", "vs conventional", "per round"], rows)}

{chr(10).join(verdicts(results))}

Conventional pipeline, calibration of torch threads (T) and DataLoader workers (W) on epochs of
{args.calibration_images} images (after a warm-up epoch); the best one is the baseline above:

{table(["model", "configuration", "images/s"], calib)}

{explain(results)}

Machine: {machine(args.device)}. Load average before / after: {loads[0]} / {loads[1]} (nothing
else heavy running; a load of about 2 is the benchmark itself on 2 cores)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn3", "tf_efficientnet_lite0"])
    parser.add_argument("--images", type=int, default=2048, help="training images per epoch (PCam train subset)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--crop", type=int, default=80, help="random crop side (RandomCrop) out of 96")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of the medtune arms")
    parser.add_argument("--baseline-configs", default=None,
                        help="conventional (threads,workers) pairs to calibrate, e.g. '2,0 1,1 2,1 1,2'")
    parser.add_argument("--calibration-images", type=int, default=512,
                        help="epoch size for calibrating the conventional pipeline")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--from-json", type=Path, help="rewrite the docs from a --json file instead of measuring")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    if args.baseline_configs is None:
        pairs = [(cores, 0), (1, 1), (cores, 1), (1, cores), (cores, cores)]
        if args.device == "cuda":
            pairs = [(1, w) for w in (2, 4, min(8, cores))]
        args.baseline_configs = list(dict.fromkeys(pairs))
    else:
        args.baseline_configs = [tuple(int(v) for v in pair.split(",")) for pair in args.baseline_configs.split()]
    os.environ.setdefault("MEDTUNE_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

    setup = (f"PCam 96x96 RGB JPEG, {args.images} training images per epoch, batch {args.batch_size}, random "
             f"{args.crop} px crop + horizontal/vertical flips + normalisation, Adam, models from scratch, device "
             f"{args.device}; medtune arms use {args.threads} torch threads; {args.rounds} alternating rounds after "
             "a warm-up. The one-time decode of all 26k PCam JPEGs into the cache takes about 9 s on this machine "
             "and is shared by every trial and study after it (not counted above).")
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        print("\n".join(verdicts(saved["results"])))
        if args.write_docs:
            write_section("throughput" if args.device == "cpu" else "throughput-cuda",
                          markdown(saved["results"], args, tuple(saved["loads"]), setup), command=saved.get("command"))
        return
    loads = [load_average()]
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_dataset(DataConfig(source=PCAM))
    print(f"PCam: {data} ({time.perf_counter() - started:.1f}s, from cache: {data.from_cache})", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="medtune-throughput-") as tmp:
        for model in args.models:
            results.append(run_model(model, args, data, Path(tmp)))
            print(json.dumps(results[-1], indent=1), flush=True)
    loads.append(load_average())
    if args.json:
        args.json.write_text(json.dumps({"results": results, "loads": loads, "command": command_line()}, indent=1))
    if args.write_docs:
        write_section("throughput" if args.device == "cpu" else "throughput-cuda", markdown(results, args, tuple(loads), setup))


if __name__ == "__main__":
    main()
