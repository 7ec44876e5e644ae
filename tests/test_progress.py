import pytest

from safcore.runtime.progress import PROGRESS_ENV, progress_bar, progress_enabled


@pytest.mark.parametrize("value, shown", [("", True), ("1", True), ("on", True), ("0", False), ("OFF", False), ("false", False)])
def test_environment_switches_every_bar(monkeypatch, value, shown):
    monkeypatch.setenv(PROGRESS_ENV, value)
    assert progress_enabled() is shown
    with progress_bar(range(3), enabled=True) as bar:
        assert bar.disable is (not shown)
        assert list(bar) == [0, 1, 2]


def test_callers_switch_wins_when_environment_allows(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    assert progress_bar(range(2), enabled=False).disable


def test_unknown_value_is_named(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "maybe")
    with pytest.raises(ValueError, match=r"SAFCORE_PROGRESS='maybe'.*0, false, no, off"):
        progress_enabled()
