"""The final model: ``search list``, ``search best [--export] [--refit] [--register]``, ``search predict``.

One small real study (cnn3 on a 15% PneumoniaMNIST subset, 4 trials, 2 epochs) runs once
for the module through the real ``search run`` command; the export, its reloads in every
format, the test metrics, predictions and the error messages are checked against it. A
tiny study on Kaggle's PCam sample layout gives a 3-channel 96 px model for Kaggle's
submission format, and a study whose every trial errors gives "no finished trial".

The hostile-user checks copy a real export and damage the copy the way a user could
(editing ``config.json``, deleting the weights, planting NaN weights), then run
``search predict`` on real images; the test-split count, the skipped-image lines and the
patient-overlap warning are read from real exports of the same study.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from search.cli import main

STUDY_SPACE = """
name: quick
data:
  source: medmnist/pneumoniamnist.npz
  train_fraction: 0.15
params:
  backbone: cnn3
  epochs: 2
  batch_size: 32
search:
  lr: {choice: [3.0e-3, 1.0e-6]}
  dropout: {choice: [0.0, 0.3]}
tune: {algorithm: grid, num_samples: 1, max_failures: 0}
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
resources: {cpus: 1}
"""

KAGGLE_SPACE = """
name: kaggle
data:
  source: pcam_kaggle_sample          # Kaggle's layout: train_labels.csv + train/<id>.tif (15 patches)
  val_fraction: 0.3
  test_fraction: 0.3
params:
  backbone: cnn3
  epochs: 1
  batch_size: 4
search:
  lr: {choice: [1.0e-3, 3.0e-3]}
tune: {algorithm: grid, num_samples: 1, max_failures: 0}
scheduler: {type: none}
resources: {cpus: 1}
"""

ERRORED_SPACE = """
name: broken
data:
  source: pcam_kaggle_sample
  val_fraction: 0.3
  test_fraction: 0.3
params:
  backbone: cnn3
  epochs: 1
  crop_size: 128                      # larger than the 96 px patches: every trial errors at setup
search:
  lr: {choice: [1.0e-3]}
tune: {algorithm: grid, num_samples: 1, max_failures: 0}
scheduler: {type: none}
resources: {cpus: 1}
"""

KAGGLE_TEST = "pcam_kaggle_sample/test"


def run_study(root: Path, space: str, returncode: int = 0) -> Path:
    """Run ``search run`` in a subprocess (its own Ray) with MLflow in ``root/mlflow.db``.

    ``returncode``: the exit status expected (1 when no trial of the study finishes).
    """
    name = space.split("name: ", 1)[1].split()[0]
    path = root / f"{name}.yaml"
    path.write_text(textwrap.dedent(space))
    log = root / f"{name}.log"
    with open(log, "w") as handle:
        proc = subprocess.run([sys.executable, "-m", "search.cli", "run", str(path), "--storage", str(root / "studies"),
                               "--num-cpus", "2"], cwd=root, stdout=handle, stderr=subprocess.STDOUT, timeout=900,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == returncode, log.read_text()
    return root / "studies" / name


def search(*args: str) -> int:
    return main(list(args))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("final-model")


@pytest.fixture(scope="module")
def study(root: Path) -> Path:
    return run_study(root, STUDY_SPACE)


@pytest.fixture(scope="module")
def record(study: Path) -> dict:
    return json.loads((study / "medtune_study.json").read_text())


@pytest.fixture(scope="module")
def exported(study: Path, root: Path) -> Path:
    target = root / "exports" / "quick"
    assert search("best", "quick", "--storage", str(study.parent), "--export", str(target)) == 0
    return target


@pytest.fixture(scope="module")
def data(study: Path):
    """The study's dataset, loaded from the space it ran (same split, checked by fingerprint)."""
    from search.model.export import study_data
    from search.records.studies import Study

    loaded = Study.load(study)
    return study_data(loaded.client(), loaded, lambda _: None)[2]


def storage(root: Path) -> str:
    return str(root / "studies")


def test_list_shows_each_study_with_trials_and_best_metric(study, record, root, capsys):
    assert search("list", "--storage", storage(root)) == 0
    out = capsys.readouterr().out
    client = MlflowClient(record["tracking_uri"])
    best = client.get_run(record["parent_run_id"]).data.metrics["study_best_val_auc"]
    line = next(line for line in out.splitlines() if line.startswith("quick "))
    assert record["created"].replace("T", " ") in line
    assert " 4 " in line and f"val_auc {best:.4f}" in line and "finished" in line, out


def test_best_prints_best_trial_and_leaderboard(study, record, root, capsys):
    client = MlflowClient(record["tracking_uri"])
    parent = client.get_run(record["parent_run_id"])
    best_run = client.get_run(parent.data.tags["medtune.best_run_id"])
    assert search("best", "quick", "--storage", storage(root), "--top", "2") == 0
    out = capsys.readouterr().out
    tags = best_run.data.tags
    assert f"best trial {tags['medtune.trial_id']}" in out
    assert f"val_auc {float(tags['medtune.best_val_auc']):.4f} at epoch {tags['medtune.best_epoch']}" in out
    assert best_run.info.run_id in out and f"lr = {best_run.data.params['lr']}" in out
    table = out.split("top 2 of 4 trials by val_auc (max):\n", 1)[1].strip().splitlines()
    assert len(table) == 3 and table[1].split()[0] == tags["medtune.trial_id"], out  # header + 2 rows
    # the run printed what to do next, with this study's storage and tracking URI
    log = (root / "quick.log").read_text()
    assert f"  search best quick --storage {storage(root)} --export exports/quick" in log
    assert f"  search report quick --storage {storage(root)}" in log
    assert f"  mlflow ui --backend-store-uri {record['tracking_uri']}" in log

    # Another metric ranks by its best epoch in each trial's history.
    assert search("best", "quick", "--storage", storage(root), "--metric", "val_loss", "--top", "1") == 0
    out = capsys.readouterr().out
    assert "by val_loss (min)" in out
    trial = out.split("best trial ", 1)[1].split()[0]
    run = next(r for r in client.search_runs([record["experiment_id"]]) if r.data.tags.get("medtune.trial_id") == trial)
    lowest = min(client.get_metric_history(run.info.run_id, "epoch/val_loss"), key=lambda m: m.value)
    assert f"val_loss {lowest.value:.4f} at epoch {lowest.step}" in out


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_export_reloads_identically_as_safetensors_torchscript_and_onnx(exported, study, record, data):
    import onnxruntime
    from safetensors.torch import load_model

    from search.model.export import rebuild_model
    from search.model.predict import load_exported
    from trainables.augment import InputSpec, prepare_batch
    from trainables.checkpoint import load_checkpoint
    from trainables.config import TrialConfig

    assert {"model.safetensors", "config.json", "model.torchscript.pt", "model.onnx", "MODEL_CARD.md", "metrics.json",
            "roc_curve.png", "confusion_matrix.png"} <= {p.name for p in exported.iterdir()}
    config = json.loads((exported / "config.json").read_text())
    pre = config["preprocess"]
    assert pre["stored_size"] == [28, 28] and pre["channels"] == 1 and pre["image_size"] is None
    assert config["model"]["class_names"] == data.class_names and config["model"]["backbone"] == "cnn3"
    assert len(pre["mean"]) == len(pre["std"]) == pre["in_chans"] == 1

    # The weights are those of the best trial's checkpoint of its best epoch.
    client = MlflowClient(record["tracking_uri"])
    tags = client.get_run(config["study"]["run_id"]).data.tags
    assert config["study"]["best_epoch"] == int(tags["medtune.best_epoch"])
    checkpoint = load_checkpoint(config["study"]["checkpoint"])
    assert checkpoint["epoch"] == int(tags["medtune.best_epoch"])
    assert f"train_{tags['medtune.trial_id']}_" in config["study"]["checkpoint"]

    network = rebuild_model(TrialConfig.from_dict(config["trial_config"]), 2, 1)
    load_model(network, str(exported / "model.safetensors"))
    for key, value in checkpoint["model"].items():
        assert torch.equal(network.state_dict()[key], value), key

    spec = InputSpec(pre["crop_size"], pre["input_size"], pre["in_chans"], tuple(pre["mean"]), tuple(pre["std"]))
    x = prepare_batch(torch.from_numpy(data.images[data.splits["test"][:100]]), spec)
    temperature = config["decision"]["temperature"]
    assert temperature > 0
    with torch.no_grad():
        reference = torch.softmax(network(x) / temperature, 1).numpy()  # the graphs fold the temperature in
        scripted = torch.jit.load(str(exported / "model.torchscript.pt"))(x).numpy()
    session = onnxruntime.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"images": x.numpy()})[0]
    onnx_one = session.run(None, {"images": x[:1].numpy()})[0]  # the batch axis is dynamic
    loaded = load_exported(exported).probabilities(data.images[data.splits["test"][:100]])
    np.testing.assert_allclose(scripted, reference, atol=1e-6)
    np.testing.assert_allclose(onnx_out, reference, atol=1e-5)
    np.testing.assert_allclose(onnx_one, reference[:1], atol=1e-5)
    np.testing.assert_allclose(loaded, reference, atol=1e-6)
    assert (reference.argmax(1) == onnx_out.argmax(1)).all()
    metrics = json.loads((exported / "metrics.json").read_text())
    assert metrics["format_max_abs_diff"]["onnx"] < 1e-4


def test_test_metrics_in_card_and_parent_run_match_the_exported_model(exported, record, data):
    from search.model.predict import load_exported
    from trainables.metrics import classification_metrics

    test = data.splits["test"]
    probs = load_exported(exported).probabilities(data.images[test])
    expected = classification_metrics(data.labels[test], probs, prefix="test_")
    metrics = json.loads((exported / "metrics.json").read_text())
    parent = MlflowClient(record["tracking_uri"]).get_run(record["parent_run_id"])
    for key, value in expected.items():
        assert metrics["test"][key] == pytest.approx(value, abs=1e-6), key
        assert parent.data.metrics[key] == pytest.approx(value, abs=1e-6), key
    threshold = json.loads((exported / "config.json").read_text())["decision"]["threshold"]
    matrix = np.zeros((2, 2), int)
    np.add.at(matrix, (data.labels[test], (probs[:, 1] >= threshold).astype(int)), 1)  # at the export's decision
    assert metrics["test_confusion_matrix"] == matrix.tolist()
    assert json.loads(parent.data.tags["medtune.test_confusion_matrix"]) == matrix.tolist()
    artifacts = {a.path for a in MlflowClient(record["tracking_uri"]).list_artifacts(record["parent_run_id"])}
    assert {"test_roc_curve.png", "test_confusion_matrix.png", "export"} <= artifacts

    card = (exported / "MODEL_CARD.md").read_text()
    sizes = data.split_sizes()
    assert f"| train | {sizes['train']} |" in card and f"| test | {sizes['test']} |" in card
    assert f"| validation | {sizes['val']} |" in card
    assert "lr: {choice: [3.0e-3, 1.0e-6]}" in card  # the search space as run
    assert f"| AUC | {metrics['validation']['val_auc']:.4f} | {expected['test_auc']:.4f} |" in card
    val_sensitivity = metrics["validation"]["val_sensitivity"]
    assert f"| sensitivity | {val_sensitivity:.4f} | {expected['test_sensitivity']:.4f} |" in card
    assert f"| normal | {matrix[0, 0]} | {matrix[0, 1]} |" in card
    assert "| lr | 0.003 |" in card and "| dropout |" in card  # the best parameters
    assert "The search ran " in card and "4 trials" in card


def test_predict_images_and_dataset_agree(exported, data, root, data_root, capsys):
    from PIL import Image

    folder = root / "pngs"
    folder.mkdir(exist_ok=True)
    test = data.splits["test"]
    for k in range(3):
        Image.fromarray(data.images[test[k], :, :, 0]).save(folder / f"case{k}.png")
    out = root / "preds.csv"
    assert search("predict", str(exported), str(data_root / "medmnist" / "pneumoniamnist.npz"), str(folder),
                  "--out", str(out)) == 0
    assert "627 images" in capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["path", "pred", "class_name", "prob_normal", "prob_pneumonia", "label"]
    by_path = {row["path"]: row for row in rows}
    for k in range(3):
        from_file, from_data = by_path[str(folder / f"case{k}.png")], rows[k]
        assert from_data["label"] == str(data.labels[test[k]]) and from_file["label"] == ""
        assert from_file["prob_pneumonia"] == from_data["prob_pneumonia"]  # decoding a PNG matches the stored image
        assert from_file["class_name"] == ["normal", "pneumonia"][int(from_file["pred"])]
    metrics = json.loads((exported / "metrics.json").read_text())
    probs = np.array([float(r["prob_pneumonia"]) for r in rows[:len(test)]])
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(data.labels[test], probs) == pytest.approx(metrics["test"]["test_auc"], abs=1e-4)


@pytest.fixture(scope="module")
def kaggle_export(root: Path) -> Path:
    run_study(root, KAGGLE_SPACE)
    target = root / "exports" / "kaggle"
    assert search("best", "kaggle", "--storage", storage(root), "--export", str(target)) == 0
    return target


def test_predict_on_kaggle_test_folder_writes_a_submission(kaggle_export, data_root, root):
    config = json.loads((kaggle_export / "config.json").read_text())
    assert config["preprocess"]["stored_size"] == [96, 96] and config["preprocess"]["in_chans"] == 3
    out = root / "submission.csv"
    assert search("predict", str(kaggle_export), str(data_root / KAGGLE_TEST), "--out", str(out)) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "id,label"
    rows = [line.split(",") for line in lines[1:]]
    ids = sorted(p.stem for p in (data_root / KAGGLE_TEST).glob("*.tif"))
    assert len(rows) == len(ids) == 11
    assert sorted(r[0] for r in rows) == ids
    assert all(0.0 <= float(r[1]) <= 1.0 for r in rows)


def test_bad_inputs_name_the_problem_and_the_fix(exported, study, record, root, capsys, monkeypatch):
    monkeypatch.chdir(root)  # where predict would write predictions.csv by default
    def error(*args: str) -> str:
        assert search(*args) == 2
        return capsys.readouterr().err

    assert "already exists" in (err := error("best", "quick", "--storage", storage(root), "--export", str(exported)))
    assert "--force" in err
    err = error("best", "nosuch", "--storage", storage(root))
    assert "no study named 'nosuch'" in err and "quick" in err and "--storage" in err

    fake = root / "studies" / "ghost"  # a study folder whose MLflow run is gone
    fake.mkdir()
    (fake / "medtune_study.json").write_text(json.dumps({**record, "name": "ghost", "parent_run_id": "0" * 32}))
    err = error("best", "ghost", "--storage", storage(root))
    assert "MLflow run 0000" in err and "ghost" in err
    shutil.rmtree(fake)

    run_study(root, ERRORED_SPACE, returncode=1)  # `search run` exits 1 when no trial finished
    err = error("best", "broken", "--storage", storage(root), "--export", str(root / "exports" / "broken"))
    assert "has no finished trial" in err and "1 errored" in err and "crop_size 128 is larger" in err
    assert not (root / "exports" / "broken").exists()

    from PIL import Image

    Image.fromarray(np.full((40, 40), 120, np.uint8)).save(root / "big.png")
    err = error("predict", str(exported), str(root / "big.png"))
    assert "big.png is 40x40 pixels" in err and "28x28" in err and "resize" in err
    Image.fromarray(np.full((28, 28, 3), 120, np.uint8)).convert("LAB").save(root / "lab.tif")
    err = error("predict", str(exported), str(root / "lab.tif"))
    assert "image mode 'LAB'" in err and "convert" in err
    (root / "notes.png").write_text("not an image")
    assert "not an image file" in error("predict", str(exported), str(root / "notes.png"))
    assert "is not a medtune export" in error("predict", str(root), str(root / "big.png"))
    assert not (root / "predictions.csv").exists()

    before = (exported / "config.json").read_text()
    assert search("best", "quick", "--storage", storage(root), "--export", str(exported), "--force") == 0
    assert json.loads((exported / "config.json").read_text())["study"] == json.loads(before)["study"]


def test_register_creates_a_model_version_with_a_signature(study, record, root, tmp_path):
    from mlflow.models import Model

    target = root / "exports" / "registered"
    before = os.environ.get("MLFLOW_TRACKING_URI")
    assert search("best", "quick", "--storage", storage(root), "--export", str(target),
                  "--register", "pneumonia-cnn") == 0
    assert os.environ.get("MLFLOW_TRACKING_URI") == before  # no process-wide MLflow state left behind
    client = MlflowClient(record["tracking_uri"])
    versions = client.search_model_versions("name = 'pneumonia-cnn'")
    assert len(versions) == 1 and versions[0].run_id == record["parent_run_id"]
    assert versions[0].source == f"runs:/{record['parent_run_id']}/registered_model/pneumonia-cnn"
    local = client.download_artifacts(record["parent_run_id"], "registered_model/pneumonia-cnn", str(tmp_path))
    model = Model.load(local)
    assert "onnx" in model.flavors and (Path(local) / "model.onnx").is_file()
    inputs, outputs = model.signature.inputs.inputs[0], model.signature.outputs.inputs[0]
    assert inputs.name == "images" and tuple(inputs.shape) == (-1, 1, 28, 28)
    assert outputs.name == "probabilities" and tuple(outputs.shape) == (-1, 2)


def test_refit_trains_on_train_and_val_for_the_best_epoch_count(study, record, root, data):
    target = root / "exports" / "refit"
    assert search("best", "quick", "--storage", storage(root), "--export", str(target), "--refit") == 0
    config = json.loads((target / "config.json").read_text())
    metrics = json.loads((target / "metrics.json").read_text())
    sizes = data.split_sizes()
    assert config["study"]["refit"] is True and config["study"]["checkpoint"] is None
    assert metrics["train_images"] == sizes["train"] + sizes["val"]
    card = (target / "MODEL_CARD.md").read_text()
    assert "--refit" in card and f"retrained on train + validation ({sizes['train'] + sizes['val']} images)" in card
    assert f"Training images of the exported weights: {sizes['train'] + sizes['val']}." in card
    parent = MlflowClient(record["tracking_uri"]).get_run(record["parent_run_id"])
    assert parent.data.tags["medtune.export.refit"] == "true"
    assert parent.data.metrics["test_auc"] == pytest.approx(metrics["test"]["test_auc"])


def test_a_tied_best_epoch_uses_the_kept_checkpoint_with_the_same_score(tmp_path):
    """Tune keeps the later of tied checkpoints; the best epoch in MLflow is the first."""
    from search.records.studies import BestTrial, Study, StudyError, best_checkpoint
    from trainables.checkpoint import save_checkpoint

    trial_dir = tmp_path / "train_abc12345_1_lr=0.001_2026-01-01_00-00-00"
    history = [{"val_auc": 0.9}, {"val_auc": 1.0}, {"val_auc": 1.0}, {"val_auc": 1.0}]
    for index, epoch in enumerate((3, 4)):
        save_checkpoint({"epoch": epoch, "history": history[:epoch]}, trial_dir / f"checkpoint_{index:06d}")
    study = Study("s", tmp_path, "sqlite:///x.db", "1", "p", "f", "", "")
    best = BestTrial("abc12345", "r", "val_auc", "max", 1.0, 2, "completed", 4, {}, [])
    folder, epoch = best_checkpoint(study, best)
    assert (folder.name, epoch) == ("checkpoint_000000", 3)
    with pytest.raises(StudyError, match="no checkpoint of epoch 2.*kept.*epochs 3, 4.*--refit"):
        best_checkpoint(study, BestTrial("abc12345", "r", "val_auc", "max", 0.95, 2, "completed", 4, {}, []))
    with pytest.raises(StudyError, match="trial abc99999 .* has no folder"):
        best_checkpoint(study, BestTrial("abc99999", "r", "val_auc", "max", 1.0, 2, "completed", 4, {}, []))


# ----------------------------------------------------------------- altered and hand-written exports


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_export(source: Path, target: Path) -> Path:
    """A fresh copy of an export folder, to damage without touching the original."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    return target


def rehash(folder: Path, name: str) -> None:
    """Make ``manifest.json`` (when there is one) agree with ``name`` again, as a user who
    regenerated the checksums, or wrote the export by hand, would: only the config and
    output checks stand between such an export and garbage predictions."""
    path = folder / "manifest.json"
    if path.exists():
        manifest = json.loads(path.read_text())
        manifest["files"][name] = {"sha256": sha256(folder / name), "bytes": (folder / name).stat().st_size}
        path.write_text(json.dumps(manifest, indent=2))


def edit_config(folder: Path, change, keep_manifest_valid: bool) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if keep_manifest_valid:
        rehash(folder, "config.json")


def refused(capsys, folder: Path, *inputs: str, out: Path) -> str:
    """Run ``search predict`` expecting exit 2 and no CSV; return stderr."""
    assert search("predict", str(folder), *inputs, "--out", str(out)) == 2
    assert not out.exists()
    return capsys.readouterr().err


def test_export_manifest_covers_every_file_and_predict_refuses_altered_files(exported, root, data_root, capsys):
    manifest = json.loads((exported / "manifest.json").read_text())
    files = {p.name for p in exported.iterdir()} - {"manifest.json"}
    assert {"config.json", "model.safetensors", "model.onnx", "model.torchscript.pt", "MODEL_CARD.md",
            "metrics.json", "roc_curve.png", "confusion_matrix.png"} <= files
    assert manifest["algorithm"] == "sha256" and set(manifest["files"]) == files
    for name, entry in manifest["files"].items():
        assert entry == {"sha256": sha256(exported / name), "bytes": (exported / name).stat().st_size}, name
    assert json.loads((exported / "config.json").read_text())["format_version"] == 4

    npz = str(data_root / "medmnist" / "pneumoniamnist.npz")
    out = root / "altered.csv"
    fix = f"re-export it with `search best quick --export {root / 'altered'} --force`"

    folder = copy_export(exported, root / "altered")  # the reviewer's edit: std 0 -> NaN for every image
    edit_config(folder, lambda c: c["preprocess"].update(std=[0.0]), keep_manifest_valid=False)
    err = refused(capsys, folder, npz, out=out)
    assert f"this export is incomplete or was altered: {folder / 'config.json'} (changed since export: its " \
           "SHA-256 differs from the one in manifest.json" in err
    assert fix in err

    folder = copy_export(exported, root / "altered")
    (folder / "model.safetensors").unlink()
    err = refused(capsys, folder, npz, out=out)
    assert f"this export is incomplete or was altered: {folder / 'model.safetensors'} (missing)" in err and fix in err

    folder = copy_export(exported, root / "altered")  # every listed file counts, not only what predict reads
    with open(folder / "MODEL_CARD.md", "a") as handle:
        handle.write("\nTest AUC 0.999 (edited)\n")
    err = refused(capsys, folder, npz, out=out)
    size = (folder / "MODEL_CARD.md").stat().st_size
    assert f"altered: {folder / 'MODEL_CARD.md'} (changed since export: its SHA-256 differs from the one in " \
           f"manifest.json; {size} bytes, {size - 25} when exported)" in err


def test_hand_written_config_with_impossible_settings_is_refused(exported, root, data_root, capsys):
    npz = str(data_root / "medmnist" / "pneumoniamnist.npz")
    out = root / "handwritten.csv"
    cases = [
        (lambda c: c["preprocess"].update(std=[0.0]), "preprocess.std must be a finite number > 0 in every channel"),
        (lambda c: c["model"].update(class_names=["normal"]),
         "model.class_names has 1 name(s) ['normal'] but the model has 2 outputs"),
        (lambda c: c["preprocess"].update(mean=[0.5, 0.5, 0.5]),
         "preprocess.mean and preprocess.std need one value per input channel (in_chans 1)"),
    ]
    for change, message in cases:
        folder = copy_export(exported, root / "handwritten")
        edit_config(folder, change, keep_manifest_valid=True)
        err = refused(capsys, folder, npz, out=out)
        assert f"{folder / 'config.json'} is not a usable export config: {message}" in err, err
        assert f"re-export it with `search best quick --export {folder} --force`" in err


def test_changed_backbone_or_missing_weights_give_clear_errors(exported, root, data_root, capsys):
    npz = str(data_root / "medmnist" / "pneumoniamnist.npz")
    out = root / "backbone.csv"

    def other_backbone(config: dict) -> None:
        config["model"]["backbone"] = config["trial_config"]["backbone"] = "cnn9"

    folder = copy_export(exported, root / "backbone")
    edit_config(folder, other_backbone, keep_manifest_valid=True)
    err = refused(capsys, folder, npz, out=out)
    assert "does not describe the network in model.safetensors: its backbone is 'cnn9', but the weights were " \
           "saved with 'cnn3'" in err and "--force`" in err

    folder = copy_export(exported, root / "backbone")
    edit_config(folder, lambda c: c["trial_config"].update(backbone="cnn9"), keep_manifest_valid=True)
    err = refused(capsys, folder, npz, out=out)
    assert "model.backbone 'cnn3' differs from trial_config.backbone 'cnn9'" in err

    folder = copy_export(exported, root / "backbone")  # an export from before manifests, its weights deleted
    (folder / "manifest.json").unlink()
    edit_config(folder, lambda c: c.update(format_version=1), keep_manifest_valid=False)
    (folder / "model.safetensors").unlink()
    err = refused(capsys, folder, npz, out=out)
    assert f"this export is incomplete or was altered: {folder / 'model.safetensors'} (missing)" in err
    assert "Traceback" not in err


def test_non_finite_probabilities_stop_predict(exported, root, data_root, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    folder = copy_export(exported, root / "nan-weights")
    weights = folder / "model.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(weights))
    first = next(key for key, value in tensors.items() if value.is_floating_point() and value.ndim > 1)
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, str(weights), metadata=metadata)
    rehash(folder, "model.safetensors")
    err = refused(capsys, folder, str(data_root / "medmnist" / "pneumoniamnist.npz"), out=root / "nan.csv")
    assert f"the model in {folder} gives non-finite (NaN or infinite) probabilities for 624 of 624 images" in err
    assert "(e.g. test_images[0]" in err and "--force`" in err


def test_export_without_manifest_loads_with_a_one_line_warning(exported, root, data_root, capsys):
    npz = str(data_root / "medmnist" / "pneumoniamnist.npz")
    assert search("predict", str(exported), npz, "--out", str(root / "verified.csv")) == 0
    assert "cannot be verified" not in capsys.readouterr().err

    folder = copy_export(exported, root / "old-export")
    (folder / "manifest.json").unlink()
    err = refused(capsys, folder, npz, out=root / "old.csv")  # format 2 always has a manifest: deleted
    assert f"altered: {folder / 'manifest.json'} (missing" in err

    edit_config(folder, lambda c: c.update(format_version=1), keep_manifest_valid=False)
    assert search("predict", str(folder), npz, "--out", str(root / "old.csv")) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "cannot be verified" in line]
    assert warnings == [f"warning: {folder} was exported before medtune wrote manifest.json, so its files cannot "
                        f"be verified; re-export it with `search best quick --export {folder} --force` to add "
                        "checksums"]
    assert (root / "old.csv").read_text() == (root / "verified.csv").read_text()


# ----------------------------------------------------------------- the study's data at another path


def test_predict_recognises_the_studys_data_by_content_at_another_path(kaggle_export, root, data_root, tmp_path):
    """The Kaggle study split its 15 patches itself (val 0.3, test 0.3): only its own settings
    give its test patches back, and a copy of the folder under another name must get them."""
    from search.model.export import study_data
    from search.records.studies import Study

    study = Study.load(root / "studies" / "kaggle")
    data = study_data(study.client(), study, lambda _: None)[2]
    test = data.splits["test"]
    copy = tmp_path / "patches_copied_elsewhere"
    shutil.copytree(data_root / "pcam_kaggle_sample", copy)
    out = tmp_path / "copy.csv"
    assert search("predict", str(kaggle_export), str(copy), "--out", str(out), "--format", "csv") == 0
    rows = list(csv.DictReader(out.open()))
    assert [row["path"] for row in rows] == [str(p) for p in data.paths[test]]
    assert [int(row["label"]) for row in rows] == data.labels[test].tolist()


def test_predict_on_a_renamed_copy_of_the_npz_gives_the_studys_test_images(exported, data, data_root, tmp_path):
    copy = tmp_path / "xray_copy.npz"
    shutil.copyfile(data_root / "medmnist" / "pneumoniamnist.npz", copy)
    out, reference = tmp_path / "copy.csv", tmp_path / "original.csv"
    assert search("predict", str(exported), str(copy), "--out", str(out)) == 0
    assert search("predict", str(exported), str(data_root / "medmnist" / "pneumoniamnist.npz"),
                  "--out", str(reference)) == 0
    rows = list(csv.DictReader(out.open()))
    test = data.splits["test"]
    assert [row["path"] for row in rows] == [str(p) for p in data.paths[test]]
    assert [int(row["label"]) for row in rows] == data.labels[test].tolist()
    assert out.read_text() == reference.read_text()


# ----------------------------------------------------------------- what the card says about the data and the test split


def test_each_export_counts_a_use_of_the_test_split(exported, study, record, root):
    from search.model.card import model_card

    client = MlflowClient(record["tracking_uri"])
    before = int(client.get_run(record["parent_run_id"]).data.tags["medtune.test_uses"])
    assert before >= 1  # `exported`, and the other exports of this module that ran before this test
    config = json.loads((exported / "config.json").read_text())
    first = model_card(config, {**json.loads((exported / "metrics.json").read_text()), "test_uses": 1}, "name: quick")
    assert "no longer an unbiased estimate" not in first and "| this card only, once, after the search |" in first
    for k in (1, 2):
        target = root / "exports" / f"test-use-{k}"
        assert search("best", "quick", "--storage", storage(root), "--export", str(target)) == 0
        uses = before + k
        assert json.loads((target / "metrics.json").read_text())["test_uses"] == uses
        card = (target / "MODEL_CARD.md").read_text()
        assert f"The test split of this study has now been used {uses} times" in card
        assert "its score is no longer an unbiased estimate" in card
        assert f"this card, after the search: use {uses} of this split |" in card
    assert client.get_run(record["parent_run_id"]).data.tags["medtune.test_uses"] == str(before + 2)


def test_card_lists_skipped_images_and_warns_of_patient_overlap(exported, study, record, root):
    from search.model.card import model_card

    client = MlflowClient(record["tracking_uri"])
    client.set_tag(record["parent_run_id"], "medtune.data_skipped", json.dumps({"unreadable": 3, "blank": 1}))
    target = root / "exports" / "skipped"
    try:
        assert search("best", "quick", "--storage", storage(root), "--export", str(target)) == 0
    finally:
        client.delete_tag(record["parent_run_id"], "medtune.data_skipped")
    card = (target / "MODEL_CARD.md").read_text()
    assert "- Left out while loading the data: 4 image(s): 3 unreadable, 1 blank; they are in no split" in card
    assert json.loads((target / "metrics.json").read_text())["data_skipped"] == {"unreadable": 3, "blank": 1}
    assert "Left out while loading" not in (exported / "MODEL_CARD.md").read_text()  # the npz skips nothing

    config = json.loads((exported / "config.json").read_text())
    summary = json.loads((exported / "metrics.json").read_text())
    assert config["data"]["data_config"]["allow_group_overlap"] is False
    assert "allow_group_overlap" not in model_card(config, summary, "name: quick")
    config["data"]["data_config"]["allow_group_overlap"] = True
    config["data"]["group_overlap"] = 5
    card = model_card(config, summary, "name: quick")
    assert ("**Warning:** the study ran with `allow_group_overlap: true`: 5 patient (group) ids have images in more "
            "than one of the source's own splits, so test images may share patients with training images") in card


def test_decision_is_fitted_on_validation_and_predict_applies_it(exported, study, record, root, data, data_root,
                                                                capsys):
    """The threshold and temperature come from the best trial's validation predictions (not test), the card
    reports them on test with the AUC's CI, and `search predict` decides with that threshold."""
    from search.evaluation import auc_interval, choose_threshold, fit_temperature, parse_threshold
    from search.evaluation.calibration import scale

    config = json.loads((exported / "config.json").read_text())
    decision = config["decision"]
    saved = np.load(Path(config["study"]["checkpoint"]) / "val_predictions.npz")
    assert len(saved["labels"]) == len(data.splits["val"])  # validation images, not test
    expected_t = fit_temperature(saved["labels"], saved["probs"]).temperature
    assert decision["temperature"] == pytest.approx(expected_t, rel=1e-9)
    point = choose_threshold(saved["labels"], scale(saved["probs"], expected_t)[:, 1], parse_threshold("youden"))
    assert decision["rule"] == "youden" and decision["threshold"] == pytest.approx(point.threshold)
    assert decision["positive_class"] == "pneumonia"

    metrics = json.loads((exported / "metrics.json").read_text())
    test_labels = data.labels[data.splits["test"]]
    interval = auc_interval(test_labels, np.asarray([[1 - p, p] for p in _predicted(root, exported, data_root)[1]]))
    decided = metrics["test_decision"]
    assert decided["auc_low"] == pytest.approx(interval.low, abs=1e-4)
    assert decided["auc_low"] < metrics["test"]["test_auc"] < decided["auc_high"]
    card = (exported / "MODEL_CARD.md").read_text()
    assert f"95% CI {decided['auc_low']:.4f}-{decided['auc_high']:.4f} (DeLong)" in card
    assert f"threshold {decision['threshold']:.4f}" in card and f"sensitivity {decided['sensitivity']:.4f}" in card
    assert "reliability.png" in {p.name for p in exported.iterdir()}

    capsys.readouterr()
    preds, probs = _predicted(root, exported, data_root)
    assert (preds == (probs >= decision["threshold"])).all()
    assert (f"at the export's threshold {decision['threshold']:.4f} (pred): sensitivity "
            f"{decided['sensitivity']:.4f}") in capsys.readouterr().out
    sens = float(preds[test_labels == 1].mean())
    assert sens == pytest.approx(decided["sensitivity"], abs=1e-9)
    parent = MlflowClient(record["tracking_uri"]).get_run(record["parent_run_id"])
    assert parent.data.metrics["test_auc_high"] == pytest.approx(decided["auc_high"])

    # a specificity-1 threshold lies one float step above the largest score, which may be 1.0: still loads
    above = copy_export(exported, root / "above-one")
    edit_config(above, lambda c: c["decision"].update(threshold=float(np.nextafter(1.0, 2.0))),
                keep_manifest_valid=True)
    assert (_predicted(root, above, data_root)[0] == 0).all()

    # another rule from the command line, refit-free: a screening point (sensitivity >= 0.95 on validation)
    screening = root / "exports" / "screening"
    assert search("best", "quick", "--storage", str(study.parent), "--export", str(screening),
                  "--threshold", "sensitivity:0.95", "--no-calibrate") == 0
    other = json.loads((screening / "config.json").read_text())["decision"]
    assert other["temperature"] == 1.0 and other["rule"] == "sensitivity:0.95"
    assert other["held_out"]["sensitivity"] >= 0.95
    capsys.readouterr()
    # a rule that does not parse is refused before any data is loaded or anything is written
    assert search("best", "quick", "--storage", str(study.parent), "--export", str(root / "exports" / "bad"),
                  "--threshold", "youdn") == 2
    err = capsys.readouterr().err
    assert "threshold 'youdn' does not parse: use youden, sensitivity:S" in err
    assert not (root / "exports" / "bad").exists()


def _predicted(root: Path, exported: Path, data_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """`search predict` on the study's test split: (pred, probability of class 1) per image."""
    out = root / "decision.csv"
    assert search("predict", str(exported), str(data_root / "medmnist" / "pneumoniamnist.npz"), "--out", str(out)) == 0
    rows = list(csv.DictReader(out.open()))
    return np.array([int(r["pred"]) for r in rows]), np.array([float(r["prob_pneumonia"]) for r in rows])


CV_SPACE = """
name: quickcv
data:
  source: medmnist/pneumoniamnist.npz
  train_fraction: 0.1
params:
  backbone: cnn3
  epochs: 1
  batch_size: 32
search:
  lr: {choice: [3.0e-3, 1.0e-3]}
tune: {algorithm: grid, num_samples: 1, max_failures: 0, cv_folds: 3}
scheduler: {type: none}
resources: {cpus: 1}
"""


@pytest.fixture(scope="module")
def cv_study(root: Path) -> Path:
    return run_study(root, CV_SPACE)


# the test-time views by hand, in NumPy: the image, then its mirror, each in 4 quarter turns
HAND_VIEWS = {
    "none": [lambda a: a],
    "flip": [lambda a: a, lambda a: a[..., ::-1]],
    "dihedral": [lambda a, k=k, m=m: np.rot90(a[..., ::-1] if m else a, k, axes=(-2, -1))
                 for m in (False, True) for k in range(4)],
}


def _members_mean(folder: Path, x: torch.Tensor) -> np.ndarray:
    """The soft vote computed by hand from the member safetensors files, the stored
    temperature and the stored test-time views."""
    from safetensors.torch import load_model

    from search.model.export import rebuild_model
    from trainables.config import TrialConfig

    config = json.loads((folder / "config.json").read_text())
    outs = []
    for member in config["ensemble"]["members"]:
        network = rebuild_model(TrialConfig.from_dict(member["trial_config"]), 2, 1)
        load_model(network, str(folder / member["weights"]))
        for hand_view in HAND_VIEWS[config.get("tta", "none")]:
            viewed = torch.from_numpy(np.ascontiguousarray(hand_view(x.numpy())))
            with torch.no_grad():
                outs.append(torch.softmax(network(viewed) / config["decision"]["temperature"], 1).numpy())
    return np.mean(outs, axis=0)


def test_a_cross_validated_study_logs_fold_metrics_and_exports_its_fold_ensemble(cv_study, root, data_root,
                                                                                  capsys):
    import onnxruntime

    from search.model.predict import load_exported
    from trainables.augment import InputSpec, prepare_batch
    from trainables.data.folds import fold_pool

    record = json.loads((cv_study / "medtune_study.json").read_text())
    assert record["cv_folds"] == 3
    client = MlflowClient(record["tracking_uri"])
    children = client.search_runs([record["experiment_id"]],
                                  f"tags.mlflow.parentRunId = '{record['parent_run_id']}'")
    assert len(children) == 2
    for run in children:  # the val_auc MLflow shows is the fold mean medtune ranks by
        m = run.data.metrics
        assert m["val_auc"] == pytest.approx(np.mean([m[f"val_auc_fold{k}"] for k in range(3)]))
        assert "val_auc_std" in m and "oof_auc" in m and "epoch/val_auc_fold2" in m

    target = root / "exports" / "quickcv"
    assert search("best", "quickcv", "--storage", str(cv_study.parent), "--export", str(target)) == 0
    assert "ensemble: the 3 fold models of trial" in capsys.readouterr().out
    config = json.loads((target / "config.json").read_text())
    assert config["ensemble"]["kind"] == "folds"
    assert [m["fold"] for m in config["ensemble"]["members"]] == [0, 1, 2]
    assert {m["weights"] for m in config["ensemble"]["members"]} == {"model.safetensors", "member_1.safetensors",
                                                                     "member_2.safetensors"}
    loaded = cv_dataset(cv_study)
    assert config["decision"]["held_out"]["images"] == len(fold_pool(loaded.splits))  # fitted out of fold
    assert "out-of-fold predictions" in config["decision"]["fitted_on"]
    pre = config["preprocess"]
    spec = InputSpec(pre["crop_size"], pre["input_size"], pre["in_chans"], tuple(pre["mean"]), tuple(pre["std"]))
    x = prepare_batch(torch.from_numpy(loaded.images[loaded.splits["test"][:50]]), spec)
    expected = _members_mean(target, x)
    session = onnxruntime.InferenceSession(str(target / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"images": x.numpy()})[0], expected, atol=1e-5)
    np.testing.assert_allclose(torch.jit.load(str(target / "model.torchscript.pt"))(x).detach().numpy(), expected,
                               atol=1e-6)
    np.testing.assert_allclose(load_exported(target).probabilities(loaded.images[loaded.splits["test"][:50]]),
                               expected, atol=1e-6)
    metrics = json.loads((target / "metrics.json").read_text())
    assert len(metrics["test_decision"]["members_auc"]) == 3
    card = (target / "MODEL_CARD.md").read_text()
    assert "## Ensemble" in card and "`member_2.safetensors`" in card
    assert "set on single fold models' out-of-fold predictions" in card

    # --ensemble none on a cross-validated trial: fold 0's model, its decision fitted on fold 0's own held-out fold
    alone = root / "exports" / "quickcv-none"
    assert search("best", "quickcv", "--storage", str(cv_study.parent), "--export", str(alone),
                  "--ensemble", "none") == 0
    single = json.loads((alone / "config.json").read_text())
    assert single["ensemble"]["members"][0]["fold"] == 0
    assert "fold 0's held-out predictions" in single["decision"]["fitted_on"]
    assert single["decision"]["held_out"]["images"] == pytest.approx(len(fold_pool(loaded.splits)) / 3, abs=2)

    # refit of a fold ensemble: one model on all of train + val, said so
    refit = root / "exports" / "quickcv-refit"
    assert search("best", "quickcv", "--storage", str(cv_study.parent), "--export", str(refit), "--refit") == 0
    assert "refit of a fold ensemble: one model on train + val" in capsys.readouterr().out
    refit_config = json.loads((refit / "config.json").read_text())
    assert len(refit_config["ensemble"]["members"]) == 1 and refit_config["trial_config"]["cv_folds"] == 1


def test_a_top_k_ensemble_soft_votes_the_best_trials(study, root, data):
    from search.model.predict import load_exported
    from trainables.augment import InputSpec, prepare_batch

    top = root / "exports" / "quick-top2"
    assert search("best", "quick", "--storage", str(study.parent), "--export", str(top), "--ensemble", "top-2") == 0
    config = json.loads((top / "config.json").read_text())
    members = config["ensemble"]["members"]
    assert config["ensemble"]["kind"] == "top-2" and len({m["trial_id"] for m in members}) == 2
    assert "the mean of the 2 members' validation predictions" in config["decision"]["fitted_on"]
    pre = config["preprocess"]
    spec = InputSpec(pre["crop_size"], pre["input_size"], pre["in_chans"], tuple(pre["mean"]), tuple(pre["std"]))
    images = data.images[data.splits["test"][:50]]
    expected = _members_mean(top, prepare_batch(torch.from_numpy(images), spec))
    np.testing.assert_allclose(load_exported(top).probabilities(images), expected, atol=1e-6)
    metrics = json.loads((top / "metrics.json").read_text())
    # the test metrics are those of what the graphs output (the calibrated soft vote)
    assert metrics["test"]["test_auc"] == pytest.approx(metrics["test_decision"]["auc"], abs=1e-12)

    # a fixed rule without calibration needs no held-out predictions
    fixed = root / "exports" / "quick-fixed"
    assert search("best", "quick", "--storage", str(study.parent), "--export", str(fixed),
                  "--threshold", "0.5", "--no-calibrate") == 0
    decision = json.loads((fixed / "config.json").read_text())["decision"]
    assert decision == {"temperature": 1.0, "threshold": 0.5, "rule": "0.5", "positive_class": "pneumonia",
                        "fitted_on": "a fixed rule: no held-out predictions used", "held_out": {}}


def cv_dataset(study_folder: Path):
    from search.model.export import study_data
    from search.records.studies import Study

    loaded = Study.load(study_folder)
    return study_data(loaded.client(), loaded, lambda _: None)[2]


def test_impossible_ensembles_are_refused_before_anything_is_written(cv_study, study, root, capsys):
    cases = [
        (("quick", str(study.parent), "top-5"), "--ensemble top-5 needs 5 finished trials, but study 'quick' has 4"),
        (("quick", str(study.parent), "folds"), "--ensemble folds needs a cross-validated trial"),
        (("quick", str(study.parent), "top-1"), "--ensemble 'top-1' is not a choice"),
        (("quickcv", str(cv_study.parent), "top-2"), "--ensemble top-2 of a cross-validated study"),
    ]
    for (name, storage_dir, choice), message in cases:
        target = root / "exports" / f"refused-{choice}"
        assert search("best", name, "--storage", storage_dir, "--export", str(target), "--ensemble", choice) == 2
        assert message in capsys.readouterr().err
        assert not target.exists()


def test_test_time_views_are_built_into_the_graphs_and_the_decision(cv_study, study, root, data, capsys):
    import onnxruntime

    from search.model.predict import load_exported
    from trainables.augment import InputSpec, prepare_batch
    from trainables.data.folds import fold_pool

    # an unknown view set is refused before any data loads
    refused_dir = root / "exports" / "tta-spin"
    assert search("best", "quick", "--storage", str(study.parent), "--export", str(refused_dir), "--tta", "spin") == 2
    assert "--tta 'spin' is not a choice: use none, flip" in capsys.readouterr().err and not refused_dir.exists()

    for name, storage, kind, views, target in [
            ("quickcv", cv_study.parent, "dihedral", 8, root / "exports" / "quickcv-dihedral"),
            ("quick", study.parent, "flip", 2, root / "exports" / "quick-top2-flip")]:
        extra = ["--ensemble", "top-2"] if name == "quick" else []
        assert search("best", name, "--storage", str(storage), "--export", str(target), "--tta", kind, *extra) == 0
        assert f"next: search predict {target.resolve()} IMAGES_OR_DATA" in capsys.readouterr().out
        config = json.loads((target / "config.json").read_text())
        assert config["tta"] == kind
        # the decision is fitted on the held-out images scored again under the same views
        assert f"scored again under the {views} views of --tta {kind}" in config["decision"]["fitted_on"]
        loaded = cv_dataset(cv_study) if name == "quickcv" else data
        held_out = len(fold_pool(loaded.splits)) if name == "quickcv" else len(loaded.splits["val"])
        assert config["decision"]["held_out"]["images"] == held_out
        pre = config["preprocess"]
        spec = InputSpec(pre["crop_size"], pre["input_size"], pre["in_chans"], tuple(pre["mean"]), tuple(pre["std"]))
        images = loaded.images[loaded.splits["test"][:40]]
        x = prepare_batch(torch.from_numpy(images), spec)
        expected = _members_mean(target, x)
        session = onnxruntime.InferenceSession(str(target / "model.onnx"), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(session.run(None, {"images": x.numpy()})[0], expected, atol=1e-5)
        np.testing.assert_allclose(torch.jit.load(str(target / "model.torchscript.pt"))(x).detach().numpy(),
                                   expected, atol=1e-6)
        np.testing.assert_allclose(load_exported(target).probabilities(images), expected, atol=1e-6)
        metrics = json.loads((target / "metrics.json").read_text())
        assert metrics["tta"] == kind and 0.0 <= metrics["test_decision"]["auc_without_tta"] <= 1.0
        assert len(metrics["test_decision"]["members_auc"]) == len(config["ensemble"]["members"])
        assert metrics["test"]["test_auc"] == pytest.approx(metrics["test_decision"]["auc"], abs=1e-12)
        card = (target / "MODEL_CARD.md").read_text()
        assert f"Test-time augmentation: {kind} ({views} views" in card
