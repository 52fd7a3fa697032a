"""The command-line glue's refusals: what a new user mistypes gets one clear line and a failing exit."""

from lhccnn import cli


def test_an_unknown_notebook_is_refused_with_the_list_of_notebooks(capsys, tmp_path):
    assert cli.main(["notebooks", "--out", str(tmp_path), "99"]) == 2
    err = capsys.readouterr().err
    assert "error: no notebook matches '99'" in err and "03_random_search_hpo" in err
    assert not list(tmp_path.iterdir())  # nothing run


def test_train_refuses_more_conv_blocks_than_the_image_has_room_for(capsys):
    from lhccnn import train

    assert train.main(["--conv-sizes", "4,4,4,4,4,4,4", "--smoke"]) == 2  # before building
    assert "conv_sizes 4,4,4,4,4,4,4 has 7 conv/pool blocks" in capsys.readouterr().err
