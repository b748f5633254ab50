"""How far a model's scores can be trusted: confidence intervals, operating points, calibration.

Used where a study's answer is handed over: the export (test AUC with its 95% CI, the
decision threshold chosen on validation or out-of-fold predictions, temperature
scaling) and the report (paired tests between trials). Plain NumPy/SciPy on
predictions already made; nothing here trains or loads a network.
"""

from search.evaluation.calibration import Calibration, expected_calibration_error, fit_temperature, nll
from search.evaluation.intervals import AucInterval, auc_interval, delong_paired
from search.evaluation.threshold import OperatingPoint, ThresholdRule, choose_threshold, parse_threshold

__all__ = ["AucInterval", "Calibration", "OperatingPoint", "ThresholdRule", "auc_interval", "choose_threshold",
           "delong_paired", "expected_calibration_error", "fit_temperature", "nll", "parse_threshold"]
