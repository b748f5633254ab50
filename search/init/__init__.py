"""``search init DATA``: read a data source's fingerprint and write a space that runs as written.

- :mod:`.fingerprint`: what the source holds (classes, sizes, colour, DICOM, patients, splits).
- :mod:`.cost`: one epoch of each candidate backbone, measured on this machine.
- :mod:`.rules`: one named function per decision, each with its printed reason.
- :mod:`.render`: the commented YAML; :mod:`.configure`: the steps in order.
"""

from search.init.configure import (
    InitOptions,
    InitResult,
    configure,
    find_data,
    study_name,
    write_space,
)
from search.init.rules import InitError

__all__ = ["InitError", "InitOptions", "InitResult", "configure", "find_data", "study_name", "write_space"]
