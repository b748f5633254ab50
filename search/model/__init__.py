"""The model a study hands back: export (:mod:`~search.model.export`), its card
(:mod:`~search.model.card`), MLflow records and registry (:mod:`~search.model.publish`),
and predictions with an export (:mod:`~search.model.predict`)."""
