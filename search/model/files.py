"""The files of an export folder (``search best NAME --export DIR``), named once.

Every file but ``manifest.json`` is listed in it with its SHA-256 and size, and checked
when the export is loaded.
"""

EXPORT_FORMAT = "medtune-model"
EXPORT_VERSION = 4  # 4: config.json's tta (test-time views); 3: config.json's decision (temperature, threshold); 2: manifest.json with every file's SHA-256 (1: none)
WEIGHTS_FILE = "model.safetensors"


def member_weights_file(index: int) -> str:
    """The safetensors file of ensemble member ``index`` (member 0, the best trial's, is ``WEIGHTS_FILE``)."""
    return WEIGHTS_FILE if index == 0 else f"member_{index}.safetensors"
CONFIG_FILE = "config.json"
TORCHSCRIPT_FILE = "model.torchscript.pt"
ONNX_FILE = "model.onnx"
CARD_FILE = "MODEL_CARD.md"
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "medtune-export-manifest"
