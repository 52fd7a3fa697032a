"""Every user string that reaches a job script is checked: no shell lines, only valid values."""

import pytest

from lhccnn.cluster import ClusterSpec
from lhccnn.jobqueue import SlurmDask
from lhccnn.slurm import check_option, check_sbatch_args


@pytest.mark.parametrize(
    "name, value",
    [
        ("time", "30"),
        ("time", "00:30:00"),
        ("time", "1-00:00:00"),
        ("time", "2-12"),
        ("time", "UNLIMITED"),
        ("constraint", "cpu"),
        ("constraint", "gpu&hbm80g"),
        ("constraint", "[rack1|rack2]*2"),
        ("qos", "interactive"),
        ("partition", "debug,regular"),
        ("account", "m1234_g"),
    ],
)
def test_valid_option_values_are_accepted(name, value):
    assert check_option(name, value) == value


@pytest.mark.parametrize(
    "name, value",
    [
        ("time", "00:30:00\n#SBATCH --wrap=id"),
        ("time", "1:2:3:4"),
        ("time", "soon"),
        ("constraint", "cpu\nrm -rf ~"),
        ("constraint", "cpu gpu"),
        ("constraint", "$(id)"),
        ("qos", "debug;id"),
        ("qos", ""),
        ("partition", "a b"),
        ("account", "m1234\r"),
        ("account", "`id`"),
        ("qos", "x\x00y"),
    ],
)
def test_bad_option_values_are_refused_with_the_value_named(name, value):
    with pytest.raises(ValueError) as err:
        check_option(name, value)
    assert repr(value) in str(err.value)


def test_sbatch_option_strings_are_split_and_each_option_checked():
    assert check_sbatch_args("-C cpu -q regular --exclusive -t 30 --account=m1234 -p debug") == [
        "--constraint=cpu",
        "--qos=regular",
        "--exclusive",
        "--time=30",
        "--account=m1234",
        "--partition=debug",
    ]
    assert check_sbatch_args("--mail-user=me@example.org") == ["--mail-user=me@example.org"]
    assert check_sbatch_args("") == []


@pytest.mark.parametrize(
    "args, message",
    [
        ("-C cpu\necho owned", "newline or control character"),
        ("-q 'debug; id'", "not a valid SLURM qos"),
        ("--output=$(id)", "characters a job script line should not carry"),
        ("cpu", "is not an option"),
        ("--time", "needs a value"),
        ("-t 1:2:3:4", "not a valid SLURM time"),
    ],
)
def test_bad_sbatch_option_strings_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        check_sbatch_args(args)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"constraint": "cpu\n#SBATCH --exclusive"},
        {"qos": "debug id"},
        {"partition": "p;id"},
        {"account": "m1\n"},
        {"time": "30 min"},
        {"python": "python\nid"},
    ],
)
def test_cluster_spec_refuses_values_that_would_break_the_job_script(kwargs):
    value = next(iter(kwargs.values()))
    with pytest.raises(ValueError) as err:
        ClusterSpec(**kwargs)
    assert repr(value) in str(err.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sbatch_options": "-C cpu\nsrun id"}, "newline"),
        ({"walltime": "1:2:3:4"}, "time"),
        ({"python": "python\nid"}, "python"),
    ],
)
def test_dask_worker_jobs_refuse_values_that_would_break_the_job_script(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SlurmDask(**kwargs)
