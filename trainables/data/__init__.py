"""Labelled medical images in, decoded uint8 arrays with a fixed split out.

``load_dataset(DataConfig(...))`` reads a MedMNIST ``.npz``, a CSV manifest (images in a
folder or a zip), an ImageFolder tree or Kaggle's PCam layout; decodes every image once
(threaded, cached on disk by content hash); skips unreadable and near-blank images with
one warning; and splits deterministically (stratified, grouped by patient when asked).

Example:
    >>> from trainables.config import DataConfig
    >>> from trainables.data import load_dataset
    >>> ds = load_dataset(DataConfig(source="chest_xray/kermany_5840_224px.zip",
    ...                              group_column="patient_group", image_size=128))  # doctest: +SKIP
    >>> ds.split_sizes()  # doctest: +SKIP
"""

from .dataset import ImageDataset, load_dataset
from .decode import DECODER_VERSION
from .errors import DataError, DataWarning
from .medmnist import ensure_medmnist
from .sources import resolve_data_path

__all__ = [
    "DECODER_VERSION",
    "DataError",
    "DataWarning",
    "ImageDataset",
    "ensure_medmnist",
    "load_dataset",
    "resolve_data_path",
]
