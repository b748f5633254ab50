"""Everything inside one trial, importable and testable without Ray or MLflow.

``trainables.data`` decodes and splits images, ``trainables.models`` builds the backbone
and head, ``trainables.optim`` the optimizer and schedule, ``trainables.trial`` runs the
epochs. Nothing here imports ``search``, Ray or MLflow.
"""
