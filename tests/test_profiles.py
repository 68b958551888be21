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
    import warnings

    before = torch.get_num_threads()
    monkeypatch.setattr(warnings, "showwarning", warnings._showwarning_orig)  # start() hooks it: undone after
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # start() sets the threads: not for the session
    monkeypatch.setenv("DIFFEDU_OFFLINE", "1")
    prof = start("Lesson X", datasets=("mnist",), profile="quick")
    out = capsys.readouterr().out
    assert prof.name == "quick"
    assert "Lesson X" in out and "device:" in out and "profile: quick" in out and "torch" in out
    assert "data:    mnist:" in out and "CPU threads:" in out
    assert torch.get_num_threads() == before


@pytest.fixture
def threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 1), (4, 3), (16, 15)])
def test_the_thread_policy_leaves_one_core_for_the_rest(monkeypatch, cores, expected):
    from diffedu.course import profiles

    monkeypatch.delenv("DIFFEDU_THREADS", raising=False)
    monkeypatch.setattr(profiles, "_TORCH_DEFAULT_THREADS", cores)
    n, why = profiles.thread_policy()
    assert n == expected and str(n) in why
    if cores > 1:
        assert f"DIFFEDU_THREADS={cores}" in why


def test_diffedu_threads_chooses_and_bad_values_are_refused(monkeypatch):
    from diffedu.course.profiles import thread_policy

    monkeypatch.setenv("DIFFEDU_THREADS", "3")
    assert thread_policy() == (3, "3 (DIFFEDU_THREADS)")
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("DIFFEDU_THREADS", bad)
        with pytest.raises(ValueError, match="DIFFEDU_THREADS must be a positive integer"):
            thread_policy()


def test_start_sets_and_prints_the_threads(monkeypatch, capsys, threads_restored):
    import warnings

    monkeypatch.setattr(warnings, "showwarning", warnings._showwarning_orig)  # start() hooks it: undone after
    monkeypatch.setenv("DIFFEDU_THREADS", "1")
    start("lesson", profile="quick")
    assert torch.get_num_threads() == 1
    assert "CPU threads: 1 (DIFFEDU_THREADS)" in capsys.readouterr().out


def test_the_sample_data_warning_is_one_plain_note_per_session(monkeypatch, capsys, threads_restored):
    import warnings

    from diffedu.data import SampleDataWarning

    passed_on = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, *args, **kwargs: passed_on.append(str(message)))
    start(profile="quick")
    start(profile="quick")  # a second start does not stack a second hook
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        for name in ("mnist (train)", "mnist (test)"):
            warnings.warn(f"{name}: a small sample bundled with diffedu", SampleDataWarning)
        warnings.warn("something else", UserWarning)
    out = capsys.readouterr().out
    assert out.count("note: mnist (train): a small sample") == 1 and "mnist (test)" not in out
    assert passed_on == ["something else"]  # other warnings go where they went before
