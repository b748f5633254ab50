"""Labelled medical images in, decoded uint8 arrays with a fixed split out.

``load_dataset(DataConfig(...))`` reads a MedMNIST ``.npz``, a CSV manifest (images in a
folder or a zip), an ImageFolder tree or Kaggle's PCam layout; decodes every image once
(threaded, cached on disk by content hash); skips unreadable and near-blank images with
one warning; splits deterministically (stratified, grouped by patient when asked); and
refuses, before decoding, data a study cannot learn from or be scored on (a split with
one class, NaN labels, patients shared by the source's own splits, a decode larger than
memory). ``describe(ds)`` is the one-line summary the CLI prints.

Example:
    >>> from trainables.config import DataConfig
    >>> from trainables.data import describe, load_dataset
    >>> ds = load_dataset(DataConfig(source="chest_xray/kermany_5840_224px.zip", image_size=128,
    ...                              group_column="patient_group", allow_group_overlap=True))  # doctest: +SKIP
    >>> describe(ds)  # doctest: +SKIP
    'data /data/chest_xray/kermany_5840_224px.zip: train 4434, val 782, test 624; 128x128x3, 2 classes; 170 group ids in several source splits (allow_group_overlap)'

    Kermany numbers patients per official split, so its ``patient_group`` ids recur in
    train and test; ``allow_group_overlap`` accepts that (the default refuses it).
"""

from .dataset import ImageDataset, describe, load_dataset
from .decode import DECODER_VERSION
from .errors import DataError, DataWarning
from .medmnist import ensure_medmnist
from .sources import resolve_data_path

__all__ = [
    "DECODER_VERSION",
    "DataError",
    "DataWarning",
    "ImageDataset",
    "describe",
    "ensure_medmnist",
    "load_dataset",
    "resolve_data_path",
]
