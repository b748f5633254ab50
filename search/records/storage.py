"""Where a study lives: a folder on this machine (or a shared mount), or a URI (s3://, gs://).

Multi-node Tune needs storage that every node sees (ray#37177): trial actors on worker
machines upload their checkpoints there. medtune's own study files (``medtune_study.json``,
ASHA's rungs) go to the same place, written only by the driver, so a study can be resumed
by a driver on another machine. Everything goes through ``pyarrow.fs``, the layer Tune
itself uses, so a URI means here exactly what it means to Tune (``s3://bucket/path``,
``gs://...``, ``file:///...``; credentials from the environment, as for Tune).
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def is_uri(storage: str) -> bool:
    """True for ``scheme://...`` storage (``file://`` included)."""
    return "://" in storage


def normalize(storage: str) -> str:
    """An absolute local path for paths and ``file://`` URIs (Tune refuses relative ones);
    other URIs unchanged, without a trailing slash."""
    if storage.startswith("file://"):
        storage = storage[len("file://"):]
    if is_uri(storage):
        return storage.rstrip("/")
    return str(Path(storage).expanduser().resolve())


@dataclass(frozen=True)
class StudyFiles:
    """A study folder ``<root>/<name>`` on local disk or behind a pyarrow URI.

    Attributes:
        root: Tune's ``storage_path``: an absolute path or a URI such as ``s3://bucket/studies``.
        name: the study (and Tune experiment) name.
    """

    root: str
    name: str

    @property
    def uri(self) -> str:
        """The study folder as Tune names it (``Tuner.restore`` takes this)."""
        return posixpath.join(self.root, self.name) if is_uri(self.root) else str(Path(self.root) / self.name)

    @property
    def is_local(self) -> bool:
        return not is_uri(self.root)

    def __str__(self) -> str:
        return self.uri

    def _fs(self, relative: str = "") -> tuple[Any, str]:
        import pyarrow.fs

        if self.is_local:
            return pyarrow.fs.LocalFileSystem(), str(Path(self.uri, relative)) if relative else self.uri
        fs, path = pyarrow.fs.FileSystem.from_uri(self.uri)
        return fs, posixpath.join(path, relative) if relative else path

    def exists(self, relative: str = "") -> bool:
        """Whether ``relative`` (a file or folder in the study; the study itself when empty) exists."""
        import pyarrow.fs

        fs, path = self._fs(relative)
        return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound

    def read_text(self, relative: str) -> str:
        fs, path = self._fs(relative)
        with fs.open_input_stream(path) as stream:
            return stream.read().decode()

    def read_optional(self, relative: str) -> str | None:
        """The file's text, or None when it does not exist."""
        return self.read_text(relative) if self.exists(relative) else None

    def write_text(self, relative: str, text: str) -> None:
        """Write a file whole: readers see the old or the new content, never a torn one
        (rename on local disk; object stores replace objects atomically)."""
        fs, path = self._fs(relative)
        fs.create_dir(posixpath.dirname(path) if not self.is_local else os.path.dirname(path), recursive=True)
        target = f"{path}.tmp-{os.getpid()}" if self.is_local else path
        with fs.open_output_stream(target) as stream:
            stream.write(text.encode())
        if target != path:
            fs.move(target, path)

    def list_dirs(self) -> list[str]:
        """Names of the folders directly inside the study (one per trial, plus Tune's own)."""
        import pyarrow.fs

        fs, path = self._fs()
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
        return sorted(info.base_name for info in infos if info.type == pyarrow.fs.FileType.Directory)

    def list_entries(self) -> list[str]:
        """Names of everything directly inside the study folder (files and folders)."""
        import pyarrow.fs

        fs, path = self._fs()
        return sorted(info.base_name for info in fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True)))

    def delete_dir(self, relative: str) -> None:
        fs, path = self._fs(relative)
        fs.delete_dir(path)
