"""What a study leaves behind, and the one way to read it back.

- :mod:`~search.records.tags`: every MLflow tag and metric name medtune writes;
- :mod:`~search.records.tracking`: the MLflow layout (parent run, child runs) and plots;
- :mod:`~search.records.runs`: a study's child runs as one table (leaderboard, best,
  export, report and resume all read it);
- :mod:`~search.records.storage`: a study folder, on local disk or behind a URI;
- :mod:`~search.records.study_record`: ``medtune_study.json``, what ``--resume`` trusts;
- :mod:`~search.records.studies`: finding studies, ranking their trials, their checkpoints.
"""
