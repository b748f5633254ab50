"""One schema: every setting declared once, checked on construction, documented from its declaration."""

from __future__ import annotations

import dataclasses

import pytest

from search.space import docs as settings_doc
from search.space.docs import README, SECTIONS, WRITE_COMMAND, render, update
from trainables.config import ConfigError, TrialConfig, field_doc, range_rule


def test_readme_tables_match_the_settings_declarations():
    text = README.read_text()
    assert update(text) == text, (f"{README} is out of date with the settings' declarations; "
                                  f"run `{WRITE_COMMAND}`")


@pytest.mark.parametrize("section", list(SECTIONS))
def test_every_setting_has_a_one_line_doc_and_a_row(section):
    cls = SECTIONS[section]
    table = render(section)
    for f in dataclasses.fields(cls):
        doc = field_doc(cls, f.name)
        assert doc.strip(), f"{cls.__name__}.{f.name} has no doc: declare it with setting(..., doc=...)"
        assert "\n" not in doc and "|" not in doc, f"{cls.__name__}.{f.name}: keep the doc on one line, no '|'"
        assert f"| `{f.name}` |" in table, f.name


def test_rows_show_default_rule_and_choices():
    trial, data = render("trial"), render("data")
    assert "| `momentum` | `0.9` | float in [0, 1) |" in trial
    assert "| `eval_batch_size` | `null` | null or int >= 1 |" in trial
    assert "| `warmup_epochs` | `0.0` | float >= 0, < epochs (any for onecycle) |" in trial
    assert "| `optimizer` | `adam` | one of `sgd`, `adam`, `adamw`, `rmsprop` |" in trial
    assert "| `source` | required | string |" in data
    assert "| `channels` | `null` | null or one of `1`, `3` |" in data
    assert "| `max_concurrent` | `null` | null or int >= 1 |" in render("tune")


def test_write_rewrites_only_the_marked_blocks(tmp_path):
    readme = tmp_path / "README.md"
    stale = README.read_text().replace("| `lr` |", "| `learning_rate` |")
    readme.write_text("prose before\n" + stale + "\nprose after\n")
    assert settings_doc.main(["--check", "--readme", str(readme)]) == 1
    assert settings_doc.main(["--write", "--readme", str(readme)]) == 0
    assert readme.read_text() == "prose before\n" + README.read_text() + "\nprose after\n"
    assert settings_doc.main(["--check", "--readme", str(readme)]) == 0


def test_a_missing_or_unknown_block_is_refused():
    with pytest.raises(ValueError, match="no marked block for"):
        update("no markers here\n")
    with pytest.raises(ValueError, match="unknown settings section 'trail'"):
        update(README.read_text() + "<!-- settings:trail -->\n<!-- /settings:trail -->\n")


def test_range_rules_read_like_the_readme():
    assert [range_rule(spec).text for spec in (">= 1", "> 0", "x <= 255", "0 <= x < 1", "0 < x <= 1")] == [
        ">= 1", "> 0", "<= 255", "in [0, 1)", "in (0, 1]"]
    rule = range_rule("0 <= x < 1")
    assert rule.test(0) and rule.test(0.5) and not rule.test(1.0) and not rule.test(float("nan"))
    assert not rule.test(True) and not range_rule("> 0").test(float("inf"))
    with pytest.raises(ValueError, match="must read like"):
        range_rule("1 < x > 2")


def test_construction_and_replace_are_checked():
    """Rules run in __post_init__: direct construction and dataclasses.replace are checked too."""
    with pytest.raises(ConfigError, match=r"trial parameter 'dropout' must be in \[0, 1\), but got 1.5"):
        TrialConfig(dropout=1.5)
    with pytest.raises(ConfigError, match=r"'gamma' must be in \(0, 1\], but got 2.0; e.g. 0.1"):
        dataclasses.replace(TrialConfig(), gamma=2.0)
    with pytest.raises(ConfigError, match="trial parameter 'epochs' expects int, but got True"):
        TrialConfig(epochs=True)
    with pytest.raises(ConfigError, match="'optimizer' must be one of .* but got 'adamm'; did you mean 'adam'"):
        TrialConfig(optimizer="adamm")  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        TrialConfig(warmup_epochs=3, epochs=2)
    assert info.value.keys == ("warmup_epochs", "epochs") and "warmup_epochs=3 with epochs=2" in str(info.value)
    assert TrialConfig(warmup_epochs=20, epochs=10, schedule="onecycle").warmup_epochs == 20


def test_settings_sections_are_checked_on_construction():
    from search.space import ResourceSettings, SchedulerSettings, TuneSettings
    from trainables.config import DataConfig

    with pytest.raises(ConfigError, match="cpus must be > 0, but got 0"):
        ResourceSettings(cpus=0)
    with pytest.raises(ConfigError, match="grace_period must be auto or an integer >= 1, but got 0"):
        SchedulerSettings(grace_period=0)
    with pytest.raises(ConfigError, match="metric must be one of .* but got 'test_auc'; selecting on the test"):
        TuneSettings(metric="test_auc")
    with pytest.raises(ConfigError, match=r"data setting 'val_fraction' must be < 1 - test_fraction, but got "
                                          r"val_fraction=0.6 with test_fraction=0.5"):
        DataConfig(source="x.npz", val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ConfigError, match="data setting 'blank_black' must be < blank_white"):
        DataConfig(source="x.npz", blank_black=220.0)
    assert TuneSettings(metric="val_loss").mode == "min"
