"""MLflow's UI for a medtune study, checked in a real headless browser (issue H).

Opt-in: ``pytest -m browser`` (about 1.5 min on 2 CPUs). Needs a Chromium binary
(Debian: ``apt-get install chromium``; or set ``MEDTUNE_CHROMIUM`` to one); skipped
without one. No Selenium or driver: Chromium's own command line renders each page
(``--dump-dom`` for the DOM after the app has run, ``--screenshot`` for a PNG).

It runs a small real study (cnn3 on 15% of PneumoniaMNIST, TPE with ASHA so some
trials stop early), serves its MLflow store with ``mlflow server``, and checks what a
user sees in the UI against what MLflow's API holds:

- the experiment's runs page lists the parent run under the study's name, with every
  trial nested in it (the count of matching runs);
- the trials, listed under the parent and sorted by MLflow's ``val_auc`` column, show
  the names medtune writes (``t01 cnn3 lr=0.0059 dropout=0.21``, ending
  ``stopped@N`` after the number for a trial ASHA stopped), in medtune's ranking order;
- a stopped-early trial's page shows its name, its parent, the metric ``val_auc``
  with the same value as the tag ``medtune.best_val_auc`` (what medtune ranks by),
  the per-epoch curve ``epoch/val_auc``, ``best_epoch`` and its state tag.

Screenshots of these pages are saved under the test's tmp dir; their paths are printed
(``pytest -m browser -s`` shows them).

Pages open in the UI's "Model training" mode (``?workflowType=machine_learning``):
MLflow 3 opens an experiment in its GenAI mode by default, where a run shows under
"Evaluations". The charts tab (``/model-metrics``) is not checked: its plots never
finish loading under Chromium's virtual time.
"""

from __future__ import annotations

import html.parser
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from test_study import TPE_SPACE, output, start, study_runs

pytestmark = pytest.mark.browser

STUDY = "mlflow_ui"
SPACE = TPE_SPACE.replace("name: resumable", f"name: {STUDY}")  # ASHA stops some of its 6 trials

# A trial's name as medtune writes it for this space (search.study.mlflow_logger).
NAME = re.compile(r"t\d{2}(?P<end> stopped@(?P<epoch>\d+))? cnn3 lr=\S+ dropout=\S+")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                  "--window-size=1600,1000"]


@pytest.fixture(scope="module")
def chromium() -> str:
    found = os.environ.get("MEDTUNE_CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if not found:
        pytest.skip("no Chromium binary found (apt-get install chromium, or set MEDTUNE_CHROMIUM to one)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(proc: subprocess.Popen) -> None:
    """End a process started with start_new_session=True, and its children."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class _Text(html.parser.HTMLParser):
    """The visible text of a DOM dump, one stripped text node a line."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("script", "style", "noscript")

    def handle_endtag(self, tag):
        self._skip -= tag in ("script", "style", "noscript") and self._skip > 0

    def handle_data(self, data):
        if not self._skip and data.strip():
            self.lines.append(data.strip())


class Browser:
    """Headless Chromium from its command line, a fresh profile for every page."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary, self.workdir, self.calls = binary, workdir, 0

    def _run(self, url: str, *args: str, budget_ms: int) -> str:
        self.calls += 1
        profile = self.workdir / f"profile-{self.calls}"
        cmd = [self.binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *args, url]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=120)
        finally:
            stop_group(proc)
            shutil.rmtree(profile, ignore_errors=True)
        return out

    def text(self, url: str, until: str, budget_ms: int = 15000) -> list[str]:
        """The page's text lines once it shows ``until`` (tries again with more time)."""
        for attempt in range(3):
            dom = self._run(url, "--dump-dom", budget_ms=budget_ms * (attempt + 1))
            parser = _Text()
            parser.feed(dom)
            if until in parser.lines:
                self.dom = dom
                return parser.lines
        raise AssertionError(f"{url} never showed {until!r}; it shows:\n" + "\n".join(parser.lines))

    def screenshot(self, url: str, path: Path, budget_ms: int = 15000) -> Path:
        self._run(url, f"--screenshot={path}", budget_ms=budget_ms)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"no screenshot of {url}"
        print(f"screenshot: {path}")
        return path


def row_text(dom: str, run_id: str) -> list[str]:
    """The text of a run's row in the runs table (every part of it the grid rendered)."""
    parser = _Text()
    for begin in [m.start() for m in re.finditer(f'row-id="{run_id}"', dom)]:
        end = dom.find('role="row"', begin)
        parser.feed(dom[begin:end if end > 0 else None].split(">", 1)[-1])
    return parser.lines


def after(lines: list[str], label: str) -> str:
    """The text right after a label (a table's value cell, a tag's ``: value``)."""
    assert label in lines, f"{label!r} not on the page"
    return lines[lines.index(label) + 1]


@pytest.fixture(scope="module")
def study(tmp_path_factory, data_root, chromium):
    tmp_path = tmp_path_factory.mktemp("mlflow-ui-study")
    proc = start(tmp_path, SPACE)
    proc.wait(timeout=900)
    assert proc.returncode == 0, output(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def mlflow_ui(study):
    """``mlflow server`` on the study's store, on a free port; yields its base URL."""
    port, log_path = free_port(), study / "mlflow-server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{study / 'mlflow.db'}",
                                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                cwd=study, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "mlflow server did not answer in 120 s:\n" + log_path.read_text()
            time.sleep(1)
        yield base
    finally:
        stop_group(proc)


def test_mlflow_ui_reads_at_a_glance(study, mlflow_ui, chromium, tmp_path):
    client, record, children = study_runs(study, STUDY)
    experiment, parent_id = record["experiment_id"], record["parent_run_id"]
    browser = Browser(chromium, tmp_path)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    mode = "workflowType=machine_learning"

    # The experiment's runs page: the parent run, named after the study, holding every trial.
    runs_url = f"{mlflow_ui}/#/experiments/{experiment}/runs?{mode}"
    lines = browser.text(runs_url, until="matching runs")
    assert lines[lines.index("matching runs") - 1] == str(len(children) + 1), lines
    assert STUDY in row_text(browser.dom, parent_id), row_text(browser.dom, parent_id)
    browser.screenshot(runs_url, shots / "runs.png")

    # The trials (the parent's children), sorted by MLflow's val_auc column, best first.
    by_name = {c.info.run_name: c for c in children}
    assert len(by_name) == len(children) == 6, sorted(by_name)
    stopped = [c for c in children if c.data.tags["medtune.state"] == "stopped_early"]
    assert stopped, "ASHA stopped no trial early in this study; the check needs one"
    for name, child in by_name.items():
        match = NAME.fullmatch(name)
        assert match, f"{name!r} is not a medtune trial name"
        tags = child.data.tags
        ended = f"stopped@{tags['medtune.last_epoch']}" if tags["medtune.state"] == "stopped_early" else None
        assert (match["end"] and match["end"][1:]) == ended, (name, tags["medtune.state"])
    search = urllib.parse.quote(f"tags.`mlflow.parentRunId` = '{parent_id}'")
    trials_url = (f"{mlflow_ui}/#/experiments/{experiment}/runs?{mode}&searchFilter={search}"
                  f"&orderByKey={urllib.parse.quote('metrics.`val_auc`')}&orderByAsc=false")
    lines = browser.text(trials_url, until=max(by_name, key=lambda n: by_name[n].data.metrics["val_auc"]))
    missing = [name for name, c in by_name.items() if name not in row_text(browser.dom, c.info.run_id)]
    assert not missing, f"trial names not shown in their rows: {missing}\npage:\n" + "\n".join(lines)
    rows = dict(re.findall(r'row-index="(\d+)" row-id="([0-9a-f]{32})"', browser.dom))
    shown = [rows[str(i)] for i in range(len(rows))]
    assert sorted(shown) == sorted(c.info.run_id for c in children), shown
    ranked = [float(client.get_run(run_id).data.tags["medtune.best_val_auc"]) for run_id in shown]
    assert all(a >= b - 5e-7 for a, b in itertools.pairwise(ranked)), f"UI order by val_auc is not medtune's ranking: {ranked}"
    browser.screenshot(trials_url, shots / "trials_by_val_auc.png")

    # A stopped-early trial's page: name, parent, and val_auc = the value medtune ranks by.
    child = max(stopped, key=lambda c: int(c.data.tags["medtune.last_epoch"]))
    tags, name = child.data.tags, child.info.run_name
    run_url = f"{mlflow_ui}/#/experiments/{experiment}/runs/{child.info.run_id}?{mode}"
    lines = browser.text(run_url, until=name)
    assert after(lines, "Parent run") == STUDY
    shown_auc = float(after(lines, "val_auc"))
    assert shown_auc == pytest.approx(child.data.metrics["val_auc"], rel=1e-9)
    assert shown_auc == pytest.approx(float(tags["medtune.best_val_auc"]), abs=5e-7)
    last_epoch_auc = client.get_metric_history(child.info.run_id, "epoch/val_auc")[-1].value
    assert float(after(lines, "epoch/val_auc")) == pytest.approx(last_epoch_auc, rel=1e-9)  # the curve's latest point
    assert int(float(after(lines, "best_epoch"))) == int(tags["medtune.best_epoch"])
    assert after(lines, "medtune.state") == ": stopped_early"
    assert after(lines, "medtune.stopped_by") == f": {tags['medtune.stopped_by']}"
    browser.screenshot(run_url, shots / "stopped_early_run.png")

    # Where a trial's best epoch is not its last, its page shows both values apart.
    later = [c for c in children if int(c.data.tags["medtune.best_epoch"]) < int(c.data.tags["medtune.last_epoch"])]
    if later:
        child = later[0]
        lines = browser.text(f"{mlflow_ui}/#/experiments/{experiment}/runs/{child.info.run_id}?{mode}", until=child.info.run_name)
        assert float(after(lines, "val_auc")) == pytest.approx(float(child.data.tags["medtune.best_val_auc"]), abs=5e-7)
        last = client.get_metric_history(child.info.run_id, "epoch/val_auc")[-1].value
        assert float(after(lines, "epoch/val_auc")) == pytest.approx(last, rel=1e-9)
    print(json.dumps({"screenshots": sorted(str(p) for p in shots.iterdir()), "browser_calls": browser.calls}, indent=1))
