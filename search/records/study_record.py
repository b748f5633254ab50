"""The study record, ``<storage>/<name>/medtune_study.json``: what ``--resume`` must trust.

The driver alone writes it (after the Tuner exists, so a driver killed before that leaves
no half-made study), and re-writes it at the end of every driver run. It holds:

- where the study's MLflow runs are (tracking URI, experiment, parent run);
- the dataset fingerprint and a digest of the space's settings (as parsed, so comments
  and key order do not count), with the settings themselves so a refused ``--resume``
  can show what changed;
- the time budget spent by earlier driver runs, so a resumed study keeps one clock;
- SHA-256 of Tune's ``tuner.pkl``: ``Tuner.restore`` unpickles it, i.e. runs whatever
  code it holds, so a resume checks it is the file this study wrote.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from search.records.storage import StudyFiles

STUDY_FILE = "medtune_study.json"
TUNER_PICKLE = "tuner.pkl"  # Ray Tune's own file name (ray.tune.impl.tuner_internal._TUNER_PKL)


class RecordError(ValueError):
    """A study record that is missing, unreadable, or does not match what is being resumed."""


def canonical_settings(raw: dict[str, Any]) -> dict[str, Any]:
    """The space's settings as parsed (plain JSON types), without ``name``/``description``.

    Comments, key order, quoting and the study's name do not change what trials run, so
    they do not count as a change of the space.
    """
    settings = {k: v for k, v in raw.items() if k not in ("name", "description")}
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def settings_digest(settings: dict[str, Any]) -> str:
    """SHA-256 of the canonical settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def settings_diff(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A unified diff of two settings mappings as sorted YAML (readable in a terminal)."""
    old = yaml.safe_dump(before, sort_keys=True, default_flow_style=False).splitlines()
    new = yaml.safe_dump(after, sort_keys=True, default_flow_style=False).splitlines()
    return "\n".join(difflib.unified_diff(old, new, "started with", "space file now", lineterm="", n=1))


def file_sha256(files: StudyFiles, relative: str) -> str | None:
    """SHA-256 of a file in the study folder, or None when it does not exist."""
    if not files.exists(relative):
        return None
    fs, path = files._fs(relative)
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass
class StudyRecord:
    """The contents of ``medtune_study.json`` (see the module docstring)."""

    name: str
    space: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    data_fingerprint: str
    created: str
    settings: dict[str, Any] | None = None
    settings_sha256: str | None = None
    budget_spent_s: float = 0.0
    tuner_sha256: str | None = None
    cv_folds: int = 1  # as resolved when the study started (`auto`, --cv); a resume keeps it

    @classmethod
    def read(cls, files: StudyFiles) -> "StudyRecord":
        """Read and check the record; the error names the file and the way out."""
        where = f"{files.uri}/{STUDY_FILE}"
        try:
            data = json.loads(files.read_text(STUDY_FILE))
            known = {f.name for f in dataclasses.fields(cls)}
            record = cls(**{k: v for k, v in data.items() if k in known})
            record.experiment_id = str(record.experiment_id)
            return record
        except (OSError, ValueError, TypeError) as err:
            raise RecordError(f"{where} is unreadable or incomplete ({type(err).__name__}: {err}); it is written "
                              "by `search run`: restore it from a backup, or start a new study with --name") from None

    def write(self, files: StudyFiles) -> None:
        files.write_text(STUDY_FILE, json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def new(cls, name: str, space_path: str | Path, raw: dict[str, Any], tracking_uri: str, experiment_id: str,
            parent_run_id: str, data_fingerprint: str) -> "StudyRecord":
        settings = canonical_settings(raw)
        return cls(name=name, space=str(Path(space_path).resolve()), tracking_uri=tracking_uri,
                   experiment_id=str(experiment_id), parent_run_id=parent_run_id, data_fingerprint=data_fingerprint,
                   created=time.strftime("%Y-%m-%dT%H:%M:%S"), settings=settings,
                   settings_sha256=settings_digest(settings))

    def check_resumable(self, files: StudyFiles, raw: dict[str, Any], data_fingerprint: str) -> None:
        """Refuse a ``--resume`` that would mix two studies or unpickle a foreign file.

        Raises:
            RecordError: the space's settings or the data changed since the study
                started (the message shows the diff), or Tune's ``tuner.pkl`` is not the
                file this study wrote (or, on local disk, belongs to another user).
        """
        fix = f"start a new study with `search run SPACE --name {self.name}-2` (or restore the space file)"
        settings = canonical_settings(raw)
        if self.settings_sha256 is not None and settings_digest(settings) != self.settings_sha256:
            diff = settings_diff(self.settings or {}, settings)
            raise RecordError(f"the space changed since study {self.name!r} started, so resuming would mix two "
                              f"studies under one name:\n{diff}\n{fix}")
        if data_fingerprint != self.data_fingerprint:
            raise RecordError(f"the data changed since study {self.name!r} started (fingerprint "
                              f"{self.data_fingerprint[:12]} then, {data_fingerprint[:12]} now); resume with the same "
                              f"data, or {fix}")
        self.check_tuner_file(files)

    def check_tuner_file(self, files: StudyFiles) -> None:
        """``tuner.pkl`` is the file this study wrote, and on local disk owned by this user."""
        where = f"{files.uri}/{TUNER_PICKLE}"
        if files.is_local:
            for path in (Path(files.uri), Path(files.uri) / TUNER_PICKLE):
                if path.exists() and path.stat().st_uid != os.getuid():
                    raise RecordError(f"{path} belongs to another user (uid {path.stat().st_uid}); resuming "
                                      "unpickles files from it, which runs their code: copy the study into a folder "
                                      "of your own only if you trust its author")
        if self.tuner_sha256 is None:
            return  # a record from before medtune checked it
        actual = file_sha256(files, TUNER_PICKLE)
        if actual != self.tuner_sha256:
            what = "is missing" if actual is None else "differs from the one this study wrote"
            raise RecordError(f"{where} {what} (SHA-256 recorded in {STUDY_FILE}); Ray Tune unpickles it on resume, "
                              "which runs the code it holds, so medtune refuses: restore the study folder from a "
                              "trusted copy, or start a new study with --name")


__all__ = ["STUDY_FILE", "TUNER_PICKLE", "RecordError", "StudyRecord", "canonical_settings", "file_sha256",
           "settings_diff", "settings_digest"]
