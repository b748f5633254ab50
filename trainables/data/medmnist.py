"""Official MedMNIST files: what they are called, where they live, how to check them.

MedMNIST ships each 2D dataset as one ``.npz`` on Zenodo, at 28 px (``pathmnist.npz``)
and, since MedMNIST+, at 64/128/224 px (``pathmnist_224.npz``). Knowing the official
MD5 lets :func:`ensure_medmnist` fetch a missing file and refuse a corrupt or foreign
one. Nothing here ever produces data that did not come from the official file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from .errors import DataError

logger = logging.getLogger(__name__)

ZENODO_RECORD = "https://zenodo.org/records/10519652/files"

_ORGANS = ["bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
           "liver", "lung-left", "lung-right", "pancreas", "spleen"]

# name -> (MD5 at 28, 64, 128, 224 px, class names). Copied from MedMNIST's INFO table
# (record 10519652); pneumoniamnist and breastmnist checked against the files in
# ../shared/data/medmnist. chestmnist is left out on purpose: it is multi-label.
_MEDMNIST: dict[str, tuple[tuple[str, str, str, str], list[str]]] = {
    "pathmnist": (("a8b06965200029087d5bd730944a56c1", "55aa9c1e0525abe5a6b9d8343a507616",
                   "ac42d08fb904d92c244187169d1fd1d9", "2c51a510bcdc9cf8ddb2af93af1eadec"),
                  ["adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                   "normal colon mucosa", "cancer-associated stroma",
                   "colorectal adenocarcinoma epithelium"]),
    "dermamnist": (("0744692d530f8e62ec473284d019b0c7", "b70a2f5635c6199aeaa28c31d7202e1f",
                    "2defd784463fa5243564e855ed717de1", "8974907d8e169bef5f5b96bc506ae45d"),
                   ["actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                    "benign keratosis-like lesions", "dermatofibroma", "melanoma",
                    "melanocytic nevi", "vascular lesions"]),
    "octmnist": (("c68d92d5b585d8d81f7112f81e2d0842", "e229e9440236b774d9f0dfef9d07bdaf",
                  "0a97e76651ace45c5d943ee3f65b63ae", "abc493b6d529d5de7569faaef2773ba3"),
                 ["choroidal neovascularization", "diabetic macular edema", "drusen", "normal"]),
    "pneumoniamnist": (("28209eda62fecd6e6a2d98b1501bb15f", "8f4eceb4ccffa70c672198ea285246c6",
                        "05b46931834c231683c68f40c47b2971", "d6a3c71de1b945ea11211b03746c1fe1"),
                       ["normal", "pneumonia"]),
    "retinamnist": (("bd4c0672f1bba3e3a89f0e4e876791e4", "afda852cc34dcda56f86ad2b2457dbcc",
                     "e48e916a24454daf90583d4e6efb1a18", "eae7e3b6f3fcbda4ae613ebdcbe35348"),
                    ["0", "1", "2", "3", "4"]),
    "breastmnist": (("750601b1f35ba3300ea97c75c52ff8f6", "742edef2a1fd1524b2efff4bd7ba9364",
                     "363e4b3f8d712e9b5de15470a2aaadf1", "b56378a6eefa9fed602bb16d192d4c8b"),
                    ["malignant", "normal, benign"]),
    "bloodmnist": (("7053d0359d879ad8a5505303e11de1dc", "2b94928a2ae4916078ca51e05b6b800b",
                    "adace1e0ed228fccda1f39692059dd4c", "b718ff6835fcbdb22ba9eacccd7b2601"),
                   ["basophil", "eosinophil", "erythroblast", "immature granulocytes",
                    "lymphocyte", "monocyte", "neutrophil", "platelet"]),
    "tissuemnist": (("ebe78ee8b05294063de985d821c1c34b", "123ece2eba09d0aa5d698fda57103344",
                     "61b955355d7425a89687b06cca3ce0c2", "b077128c4a949f0a4eb01517f9037b9c"),
                    ["Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule",
                     "Glomerular endothelial cells", "Interstitial endothelial cells",
                     "Leukocytes", "Podocytes", "Proximal Tubule Segments",
                     "Thick Ascending Limb"]),
    "organamnist": (("68e3f8846a6bd62f0c9bf841c0d9eacc", "2dcccc29b88e6da5a01161ef20cda288",
                     "eeae80d0a227a8d099027e1b3cfd3b60", "50747347e05c87dd3aaf92c49f9f3170"),
                    _ORGANS),
    "organcmnist": (("b9ceb9546e10131b32923c5bbeaea2b1", "3ce34a8724ea6f548e6db4744d03b6a9",
                     "773c1f009daa3fe5d9a2a201b2a7ed94", "050f5e875dc056f6768abf94ec9995d1"),
                    _ORGANS),
    "organsmnist": (("9ab87b696fb54e2a387ebe992d6ed5f1", "53a6d115339d874c25e309a994ff46d3",
                     "ded0c5fa01a95dc4978b956f613e9b8e", "b354719e553fbbb2513d5533f52a4cb1"),
                    _ORGANS),
}
_SIZES = ("", "_64", "_128", "_224")


def known_file(name: str) -> tuple[str, str] | None:
    """Official ``(url, md5)`` of a MedMNIST file name such as ``pneumoniamnist_224.npz``."""
    stem = name[:-4] if name.endswith(".npz") else name
    for dataset, (md5s, _) in _MEDMNIST.items():
        for suffix, md5 in zip(_SIZES, md5s):
            if stem == dataset + suffix:
                return f"{ZENODO_RECORD}/{stem}.npz?download=1", md5
    return None


def class_names_for(path: Path) -> list[str] | None:
    """Official class names when ``path`` is named like a MedMNIST file, else None."""
    stem = path.name[:-4] if path.name.endswith(".npz") else path.name
    for suffix in _SIZES[1:]:
        stem = stem.removesuffix(suffix)
    entry = _MEDMNIST.get(stem)
    return list(entry[1]) if entry else None


def md5_of(path: Path) -> str:
    """MD5 hex digest of a file (MedMNIST's Zenodo record lists MD5s), read in blocks."""
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "md5").hexdigest()


def ensure_medmnist(path: Path, *, url: str | None = None, timeout: float = 30.0) -> Path:
    """Return ``path``, downloading the official MedMNIST file there first if it is missing.

    The download goes to a temporary file beside ``path``, is checked against the
    official MD5 and only then moved into place, so an interrupted or tampered download
    never leaves a file that looks valid. There is no fallback to synthetic data.

    Args:
        path: where the ``.npz`` should be, e.g. ``data/pneumoniamnist.npz``.
        url: download from here instead of Zenodo (a mirror, or ``file://`` in tests);
            the MD5 check still applies.
        timeout: seconds to wait for the server before giving up.

    Returns:
        ``path``, which now exists.

    Raises:
        DataError: the name is not a known MedMNIST file, the download failed (the
            message says which file to put where, and the URL), or the MD5 differs.

    Example:
        >>> ensure_medmnist(Path("data/pneumoniamnist.npz"))  # doctest: +SKIP
        PosixPath('data/pneumoniamnist.npz')
    """
    path = Path(path).expanduser()
    if path.exists():
        return path
    known = known_file(path.name)
    if known is None:
        raise DataError(
            f"data file {str(path)!r} does not exist, and {path.name!r} is not a known MedMNIST "
            f"file that could be downloaded (known: {', '.join(sorted(_MEDMNIST))}, with optional "
            "_64/_128/_224 suffix); check the path or set MEDTUNE_DATA to the folder holding it"
        )
    official_url, md5 = known
    url = url or official_url
    manual = (f"download {official_url} by hand and save it as {path} "
              f"(MD5 {md5}), or point the data source at an existing copy")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:
        raise DataError(f"cannot write {path} to download it ({exc}); {manual}") from None
    tmp = Path(tmp_name)
    try:
        logger.info("downloading %s to %s", url, path)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            shutil.copyfileobj(response, out, 1 << 20)
        got = md5_of(tmp)
        if got != md5:
            raise DataError(f"downloaded {url} has MD5 {got}, but the official {path.name} has "
                            f"{md5}; the download is corrupt or not that file: {manual}")
        os.replace(tmp, path)
    except DataError:
        raise
    except (OSError, ValueError) as exc:  # URLError, timeouts, HTTP errors, bad URLs
        raise DataError(f"could not download {path.name} from {url} ({exc}); {manual}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


__all__ = ["ensure_medmnist", "known_file", "class_names_for", "md5_of"]
