"""Pack the data the GPU check needs into ``data/`` (git-ignored), small enough to travel.

A device machine gets the working tree (64 MiB at most) and nothing else, so the shared
data folder is not there. This writes, under ``--out`` (default ``data``, the project's
git-ignored data folder, which ``benchmarks/gpu_check.sh`` uses as ``$MEDTUNE_DATA``):

- ``medmnist/pneumoniamnist.npz``: a copy of the official file (4.2 MB);
- ``pcam/pcam_gpu_subset_96px.zip``: a stratified PCam subset (default 5,000 train /
  1,000 valid / 500 test patches, about 29 MB), the same layout as the full zip (one top
  folder ``pcam/`` holding ``labels.csv`` and the JPEGs, stored uncompressed).

Run it on the machine that has the shared data, then carry ``data`` to the device:
    python benchmarks/gpu_data.py            # MEDTUNE_DATA or ../shared/data -> ./data
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

SUBSET = "pcam/pcam_gpu_subset_96px.zip"


def pack_pcam(source: Path, target: Path, sizes: dict[str, int], seed: int = 0) -> dict[str, int]:
    """Write a class-stratified subset of the PCam zip ``source`` to ``target``; returns counts per split."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(source) as archive:
        top = archive.namelist()[0].split("/")[0]
        rows = list(csv.DictReader(io.TextIOWrapper(archive.open(f"{top}/labels.csv"), encoding="utf-8")))
        fields = list(rows[0].keys())
        chosen = []
        for split, count in sizes.items():
            for label in ("0", "1"):
                pool = [r for r in rows if r["split"] == split and r["label"] == label]
                picks = rng.choice(len(pool), size=min(count // 2, len(pool)), replace=False)
                chosen += [pool[i] for i in sorted(picks)]
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as out:
            out.writestr(f"{top}/", b"")
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
            writer.writeheader()
            writer.writerows(chosen)
            out.writestr(f"{top}/labels.csv", text.getvalue())
            for row in chosen:
                out.writestr(f"{top}/{row['path']}", archive.read(f"{top}/{row['path']}"))
        partial.replace(target)
    return {split: sum(r["split"] == split for r in chosen) for split in sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_src = os.environ.get("MEDTUNE_DATA") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--source", type=Path, default=Path(default_src), help="the shared data folder")
    parser.add_argument("--out", type=Path, default=Path("data"), help="where to write (default ./data)")
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--valid", type=int, default=1000)
    parser.add_argument("--test", type=int, default=500)
    args = parser.parse_args()
    if args.source.resolve() == args.out.resolve():
        raise SystemExit("--source and --out are the same folder")
    npz = args.out / "medmnist" / "pneumoniamnist.npz"
    npz.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.source / "medmnist" / "pneumoniamnist.npz", npz)
    counts = pack_pcam(args.source / "pcam" / "pcam_26k_96px.zip", args.out / SUBSET,
                       {"train": args.train, "valid": args.valid, "test": args.test})
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {npz} and {args.out / SUBSET} {counts}; {total / 2**20:.1f} MiB under {args.out}")


if __name__ == "__main__":
    main()
