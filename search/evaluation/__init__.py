"""How far a model's scores can be trusted: confidence intervals, operating points, calibration.

Used where a study's answer is handed over: the export (test AUC with its 95% CI, the
decision threshold chosen on validation or out-of-fold predictions, temperature
scaling) and the report (paired tests between trials). Plain NumPy/SciPy on
predictions already made; nothing here trains or loads a network. Names are imported on
first use, so parsing a threshold rule (the space loader does) does not import SciPy.
"""

_EXPORTS = {
    **dict.fromkeys(["Calibration", "expected_calibration_error", "fit_temperature", "nll"],
                    "search.evaluation.calibration"),
    **dict.fromkeys(["AucInterval", "PairedTest", "auc_interval", "delong_paired"], "search.evaluation.intervals"),
    **dict.fromkeys(["OperatingPoint", "ThresholdRule", "choose_threshold", "parse_threshold"],
                    "search.evaluation.threshold"),
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'search.evaluation' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
