"""The command-line glue's refusals: a new user's typo gets one clear line and a failing exit."""

from lhccnn import cli


def test_an_unknown_notebook_is_refused_with_the_list_of_notebooks(capsys, tmp_path):
    assert cli.main(["notebooks", "--out", str(tmp_path), "99"]) == 2
    err = capsys.readouterr().err
    assert "error: no notebook matches '99'" in err and "03_random_search_hpo" in err
    assert not list(tmp_path.iterdir())  # nothing run


def test_train_refuses_more_conv_blocks_than_the_image_has_room_for():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "lhccnn.train", "--conv-sizes", "4,4,4,4,4,4,4", "--smoke"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2  # refused before anything is built
    assert "conv_sizes 4,4,4,4,4,4,4 has 7 conv/pool blocks" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_lhccnn_command_lists_its_commands_and_hands_train_and_fetch_their_own_help():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "lhccnn"  # installed by pip from pyproject's scripts
    assert script.exists(), "the lhccnn console script is missing: make env reinstalls"
    top = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert top.returncode == 0
    for command in ("train", "fetch", "pbt", "notebooks", "summary", "wait-job"):
        assert f"    {command}" in top.stdout, top.stdout
    for command, option in (("train", "--horovod"), ("fetch", "--source")):
        out = subprocess.run(
            [script, command, "--help"], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0 and f"usage: lhccnn {command}" in out.stdout
        assert option in out.stdout
    bad = subprocess.run([script, "trian"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'trian'" in bad.stderr


def test_outside_a_terminal_the_notebook_runner_says_which_cell_is_running(
    tmp_path, capsys, monkeypatch
):
    import json
    import os
    import time
    from pathlib import Path

    executed = tmp_path / "05.ipynb"
    states = ["completed", "running", "pending"]  # as papermill saves them after each cell
    cells = [{"cell_type": "markdown", "metadata": {}}] + [
        {"cell_type": "code", "metadata": {"papermill": {"status": s}}} for s in states
    ]
    executed.write_text(json.dumps({"cells": cells}))
    assert cli.running_cell(executed) == (2, 3)
    assert cli.running_cell(tmp_path / "not-yet.ipynb") is None
    monkeypatch.chdir(tmp_path)
    with cli._still_running(Path("05.ipynb"), time.perf_counter(), quiet=False, every=0.05):
        os.chdir(tmp_path.parent)  # as papermill does while a notebook runs
        time.sleep(0.3)
    said = capsys.readouterr().out
    assert "... cell 2 of 3 running" in said
    with cli._still_running(executed, time.perf_counter(), quiet=True, every=0.05):
        time.sleep(0.2)  # in a terminal papermill's own progress bar says it
    assert capsys.readouterr().out == ""
