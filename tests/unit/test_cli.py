"""The command-line glue's refusals: what a new user mistypes gets one clear line and a failing exit."""

from lhccnn import cli


def test_an_unknown_notebook_is_refused_with_the_list_of_notebooks(capsys, tmp_path):
    assert cli.main(["notebooks", "--out", str(tmp_path), "99"]) == 2
    err = capsys.readouterr().err
    assert "error: no notebook matches '99'" in err and "03_random_search_hpo" in err
    assert not list(tmp_path.iterdir())  # nothing run


def test_train_refuses_more_conv_blocks_than_the_image_has_room_for():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "lhccnn.train", "--conv-sizes", "4,4,4,4,4,4,4",
                          "--smoke"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2  # refused before anything is built
    assert "conv_sizes 4,4,4,4,4,4,4 has 7 conv/pool blocks" in out.stderr
    assert "Traceback" not in out.stderr
