import pytest
import torch

from diffedu.course.profiles import PROFILES, get_profile, start


def test_environment_variable_picks_the_profile(monkeypatch):
    for name in PROFILES:
        monkeypatch.setenv("DIFFEDU_PROFILE", name)
        assert get_profile().name == name
    monkeypatch.setenv("DIFFEDU_PROFILE", " CPU ")
    assert get_profile().name == "cpu"


def test_default_follows_the_hardware(monkeypatch):
    monkeypatch.delenv("DIFFEDU_PROFILE", raising=False)
    expected = "gpu" if torch.cuda.is_available() else "cpu"
    assert get_profile().name == expected


def test_unknown_profile_lists_the_valid_ones(monkeypatch):
    monkeypatch.setenv("DIFFEDU_PROFILE", "laptop")
    with pytest.raises(ValueError, match="unknown profile 'laptop'.*'quick', 'cpu', 'gpu'"):
        get_profile()


def test_pick():
    p = get_profile("quick")
    assert p.pick(quick=1, cpu=2, gpu=3) == 1
    assert get_profile("gpu").pick(quick=1, cpu=2, gpu=3) == 3
    assert p.is_quick


def test_start_prints_the_set_up(capsys, monkeypatch):
    monkeypatch.setenv("DIFFEDU_OFFLINE", "1")
    prof = start("Lesson X", datasets=("mnist",), profile="quick")
    out = capsys.readouterr().out
    assert prof.name == "quick"
    assert "Lesson X" in out and "device:" in out and "profile: quick" in out and "torch" in out
    assert "data:    mnist:" in out
