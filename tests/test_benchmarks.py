"""The benchmarks compare like with like: the conventional pipeline and the trainable see the
same pixels, and the driver timers of the overhead benchmark leave behaviour unchanged."""

import importlib.util
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trainables.augment import InputSpec, prepare_batch
from trainables.data.decode import decode_files

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _pcam_jpegs(data_root: Path, count: int) -> list[bytes]:
    with zipfile.ZipFile(data_root / "pcam" / "pcam_26k_96px.zip") as archive:
        names = [n for n in archive.namelist() if n.endswith(".jpg")][:count]
        return [archive.read(n) for n in names]


def test_conventional_pipeline_sees_the_pixels_the_trainable_sees(data_root, tmp_path):
    throughput = _load("throughput")
    blobs = _pcam_jpegs(data_root, 8)
    decoded = decode_files(lambda i: blobs[i], [f"{i}.jpg" for i in range(len(blobs))], channels=3)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    ours = prepare_batch(torch.from_numpy(decoded.images), InputSpec(80, None, 3, mean, std))

    files = []
    for i, blob in enumerate(blobs):
        files.append(tmp_path / f"{i}.jpg")
        files[-1].write_bytes(blob)
    dataset = throughput.JpegFolder(files, np.zeros(len(files), int),
                                    throughput.conventional_transform(80, mean, std, train=False))
    theirs = torch.stack([dataset[i][0] for i in range(len(files))])
    assert theirs.shape == ours.shape == (8, 3, 80, 80)
    torch.testing.assert_close(theirs, ours, atol=1e-6, rtol=0)
    # and the PIL decode per sample is the decode-once cache's decode
    with Image.open(files[0]) as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), decoded.images[0])


def test_search_efficiency_time_to_reach_reads_the_best_so_far_curve():
    efficiency = _load("search_efficiency")
    points = [(10.0, 0.80), (25.0, 0.86), (70.0, 0.90)]
    assert efficiency.time_to_reach(points, 0.86) == 25.0
    assert efficiency.time_to_reach(points, 0.85) == 25.0
    assert efficiency.time_to_reach(points, 0.95) is None


def test_generalization_spaces_validate_and_the_report_judges_the_targets(tmp_path, capsys, data_root, monkeypatch):
    import json

    import yaml

    from search.space import load_space

    gen = _load("generalization")
    monkeypatch.setenv("MEDTUNE_DATA", str(data_root))
    for study in ("single", "cv", "random", "recipe"):  # every study's space is one medtune accepts
        path = tmp_path / f"{study}.yaml"
        path.write_text(yaml.safe_dump(gen.study_space("breast", study, "3m", 0)))
        space = load_space(path)
        assert space.tune.cv_folds == (5 if study == "cv" else 1)
    folder = tmp_path / "breast"
    (folder / "exports").mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"budget": "3m", "seed": 0, "load": "1.0"}))
    scores = {"single": (0.90, 0.80), "top5": (0.90, 0.84), "cv": (0.84, 0.83), "random": (0.88, 0.81)}
    for arm, (estimate, test) in scores.items():  # the recipe's export "failed": reported, not fatal
        (folder / "exports" / arm).mkdir()
        (folder / "exports" / arm / "metrics.json").write_text(json.dumps({
            "test_decision": {"auc": test, "auc_low": test - 0.05, "auc_high": test + 0.05, "ece_after": 0.05,
                              "ece_before": 0.1},
            "best": {"value": estimate}, "search": {"trials": 10, "wall_seconds": 180.0},
            "ensemble": {"members": [{}] * (5 if arm in ("top5", "cv") else 1)}}))
    (folder / "export-recipe.log").write_text("error: no finished trial\n")
    gen.report(tmp_path, write_docs=False)
    out = capsys.readouterr().out
    assert "| (b) TPE+ASHA, 5-fold CV, fold ensemble | 0.830 (0.780-0.880) | 0.840 | 0.010 |" in out
    assert "(e) fixed recipe, no search: no model (error: no finished trial)" in out


def test_asha_replay_stops_below_the_cutoff_unless_within_the_margin():
    asha = _load("asha_noise")
    assert asha.rungs(1) == [1, 3] and asha.rungs(2) == [2] and asha.rungs(3) == [3]
    # trial 2 starts worst and ends best: grace 1 stops it at epoch 1, a margin of 0.1 lets it through
    curves = [np.array([0.80, 0.81, 0.82, 0.83, 0.83, 0.83]), np.array([0.85, 0.85, 0.86, 0.86, 0.86, 0.86]),
              np.array([0.78, 0.85, 0.90, 0.92, 0.93, 0.94])]
    order = np.array([0, 1, 2])
    assert asha.replay(curves, order, grace=1, margin=0.0) == (1, 6 + 6 + 1)
    assert asha.replay(curves, order, grace=1, margin=0.1) == (2, 18)
    assert asha.replay(curves, order, grace=2, margin=0.0) == (2, 18)  # by epoch 2 it is ahead
    rows = {(r["grace"], r["margin"]): r for r in asha.measure(curves, se=0.05)}
    assert rows[(1, 2.0)]["found"] == 1.0 and rows[(1, 2.0)]["cost"] == 1.0 and rows[(1, 2.0)]["regret"] == 0.0
    assert rows[(1, 0.0)]["found"] < 1.0 and rows[(1, 0.0)]["regret"] > 0.0 and rows[(1, 0.0)]["cost"] < 1.0


def test_init_space_benchmark_runs_the_shipped_hand_space_and_judges_init_against_its_interval(tmp_path, capsys,
                                                                                              data_root, monkeypatch):
    import json

    from search.space import load_space

    bench = _load("init_space")
    monkeypatch.setenv("MEDTUNE_DATA", str(data_root))
    for dataset in bench.DATASETS:  # each hand-written space, renamed and pointed at its data, still validates
        folder = tmp_path / dataset
        folder.mkdir()
        space = load_space(bench.hand_space(dataset, folder))
        assert space.name == f"hand-{dataset}" and Path(space.data.source).exists()
    for dataset, (init, hand) in {"breast": (0.85, 0.80), "pneumonia": (0.90, 0.95)}.items():
        folder = tmp_path / dataset
        (folder / "meta.json").write_text(json.dumps({"budget": "5m", "load": "1.0"}))
        (folder / "init.log").write_text("tune.cv_folds: 5    # small\nwrote x.yaml in 17 s; it validates\n")
        for arm, auc in (("init", init), ("hand", hand)):
            (folder / "exports" / arm).mkdir(parents=True)
            (folder / "exports" / arm / "metrics.json").write_text(json.dumps({
                "test_decision": {"auc": auc, "auc_low": auc - 0.03, "auc_high": auc + 0.03},
                "best": {"value": auc}, "search": {"trials": 7}, "ensemble": {"members": [{}]}}))
    bench.report(tmp_path, write_docs=False)
    out = capsys.readouterr().out
    assert "| breast | 17 s | 0.850 (0.820-0.880), 7 trials | 0.800 (0.770-0.830), 7 trials | better |" in out
    assert "| pneumonia | 17 s | 0.900 (0.870-0.930), 7 trials | 0.950 (0.920-0.980), 7 trials | worse |" in out
    assert "| breast | cv_folds 5 |" in out


def test_study_scale_windows_split_the_driver_time_by_finished_trials():
    scale = _load("study_scale")
    # 5 trial ends 2 s apart, driver CPU 0.5 s per trial, then one 1.5 s snapshot in the second window
    ends = [(100.0 + 2 * i, 10.0 + 0.5 * i, 200 * 1024) for i in range(5)]
    calls = [(0, "Optuna suggest", 0.2), (1, "Optuna suggest", 0.2), (2, "Tune experiment snapshots", 1.5)]
    rows = scale.windows({"ends": ends, "calls": calls}, size=2)
    assert [r["trials"] for r in rows] == ["1-3", "3-5"]
    assert rows[0]["wall_per_trial"] == 2.0 and rows[0]["cpu_per_trial"] == 0.5
    assert rows[0]["parts"] == {"Optuna suggest": 0.2} and rows[1]["parts"] == {"Tune experiment snapshots": 0.75}
    assert rows[1]["rss_mib"] == 200
