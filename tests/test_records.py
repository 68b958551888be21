"""The recorded figures shown in the lessons (`diffedu.course.records`): read, arranged, latest wins."""

import json

import pytest

from diffedu.course.records import VIEWS, View, load_records, plot_recorded, recorded_tables


def row(metric, value, **settings):
    top = {k: settings.pop(k) for k in ("device", "profile") if k in settings}
    return {"benchmark": "b", "metric": metric, "value": value, "unit": "-", "profile": top.get("profile", "cpu"),
            "device": top.get("device", "CPU A"), "torch": "2.x", "date": "2026", "commit": "abc", "settings": settings}


def write(tmp_path, name, rows):
    (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


VIEW = View(tables=("device",), rows=("sampler", "steps"), columns=("fid_self", "seconds_to_fid_self@target"),
            summary=("speedup",))


def test_one_table_per_group_one_row_per_setting_and_the_latest_figure_wins(tmp_path):
    write(tmp_path, "b", [
        row("fid_self", 9.0, sampler="ddim", steps=20), row("fid_self", 7.5, sampler="ddim", steps=20),
        row("fid_self", 6.0, sampler="ddim", steps=50), row("seconds_to_fid_self", 120.0, sampler="ddim", steps=50,
                                                             target=10),
        row("speedup", 6.1), row("fid_self", 3.0, sampler="ddpm", steps=1000, device="GPU B"),
        row("unrelated", 1.0, sampler="ddim", steps=20),
    ])
    tables = recorded_tables("b", VIEW, directory=tmp_path)
    assert [t.heading for t in tables.tables] == ["device CPU A", "device GPU B"]
    cpu = tables.tables[0]
    assert cpu.columns == ["sampler", "steps", "FID_self", "s to FID_self <= 10"]
    assert cpu.rows == [["ddim", "20", "7.5", "-"], ["ddim", "50", "6", "120"]]  # 9.0 was overwritten by 7.5
    assert cpu.summary == ["speedup: 6.1"]
    text, html = str(tables), tables._repr_html_()
    assert "7.5" in text and "9" not in text.split("\n")[2] and "<table>" in html and "GPU B" in html


def test_latest_prefer_suffix_and_defaults(tmp_path):
    write(tmp_path, "b", [
        row("acc", 0.5, run=1, w=1, profile="gpu"), row("acc", 0.6, run=2, w=1), row("acc", 0.7, run=3, w=1),
        row("acc_heldout", 0.4, run=3, w=1, split="heldout"),
    ])
    view = View(tables=("run",), rows=("split", "w"), columns=("acc",), latest=True, metric_suffix="_heldout",
                defaults={"split": lambda r: "train"})
    tables = recorded_tables("b", view, directory=tmp_path)
    assert len(tables.tables) == 1 and tables.tables[0].heading == "run 3"
    assert tables.tables[0].rows == [["heldout", "1", "0.4"], ["train", "1", "0.7"]]
    preferred = recorded_tables("b", View(tables=("run",), rows=("w",), columns=("acc",), prefer={"profile": "gpu"}),
                                directory=tmp_path)
    assert [t.heading for t in preferred.tables] == ["run 1"]  # the GPU's figures, where there are any
    only = recorded_tables("b", View(tables=("run",), rows=("w",), columns=("acc",), defaults={"run": 0}),
                           where={"run": 2}, directory=tmp_path)
    assert [t.heading for t in only.tables] == ["run 2"] and only.tables[0].rows == [["1", "0.6"]]
    none = recorded_tables("b", View(tables=("run",), rows=("w",), columns=("acc",)), where={"run": 9},
                           directory=tmp_path)
    assert not none.tables and "match {'run': 9}" in str(none)


def test_missing_figures_say_how_to_make_them_and_a_broken_file_is_refused(tmp_path):
    empty = recorded_tables("ddim_steps", directory=tmp_path)
    assert not empty.tables and "python benchmarks/mnist_quality.py" in str(empty)
    (tmp_path / "b.jsonl").write_text('{"metric": "x"\n')
    with pytest.raises(ValueError, match="line 1"):
        load_records("b", tmp_path)
    with pytest.raises(ValueError, match="no view for benchmark 'nope'"):
        recorded_tables("nope", directory=tmp_path)


def test_plot_recorded_draws_one_line_per_series_with_the_latest_values(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    write(tmp_path, "b", [
        row("fid_self", 9.0, sampler="ddim", nfe=10, model="m"),
        row("fid_self", 8.0, sampler="ddim", nfe=10, model="m"),  # the latest wins
        row("fid_self", 5.0, sampler="ddim", nfe=50, model="m"), row("fid_self", 4.0, sampler="heun", nfe=9, model="m"),
        row("fid_self", 1.0, sampler="heun", nfe=9, model="other"),  # left out by where=
        row("fid_self_floor", 1.1, sampler="ddim", nfe=10, model="m"),
    ])
    write(tmp_path, "other", [row("fid_self", 2.5, sampler="ddpm", model="m"), row("fid_self", 2.4, sampler="ddpm",
                                                                                  model="m")])
    ax = plot_recorded("b", x="nfe", y="fid_self", series=("sampler",), where={"model": "m"}, floor="fid_self_floor",
                       reference=("other", {"sampler": "ddpm"}, "DDPM-1000"), directory=tmp_path)
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}
    assert lines["ddim"] == ([10, 50], [8.0, 5.0]) and lines["heun"] == ([9], [4.0])
    assert "floor 1.1" in lines and "DDPM-1000 2.4" in lines
    assert plot_recorded("b", x="nfe", y="kid_self", series=("sampler",), directory=tmp_path) is None


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_every_lesson_view_reads_the_repository_figures(name):
    """The figures committed in benchmarks/results fit the views the lessons show."""
    tables = recorded_tables(name)
    assert tables.tables, str(tables)
    assert all(len(r) == len(t.columns) for t in tables.tables for r in t.rows)
