"""The container recipe, checked without building it: the Dockerfile's inputs exist, its base and
layer order, its command is the README's test command and CI builds and runs it; its entrypoint,
run natively, brings up a second mini SLURM, runs the command inside it, exits with the command's
status and leaves nothing running. The built image's own tests: tests/container
(make container-test)."""

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()


def test_dockerfile_copies_what_exists_and_runs_the_readme_test_command():
    for line in re.findall(r"^COPY (.+)$", DOCKERFILE, flags=re.M):
        *sources, _dest = line.split()
        for src in sources:
            assert src == "." or (REPO / src).exists(), f"Dockerfile copies a missing {src}"
    entry = re.search(r'^ENTRYPOINT \["([^"]+)"\]', DOCKERFILE, flags=re.M).group(1)
    assert os.access(REPO / entry, os.X_OK), entry
    cmd = " ".join(
        re.findall(r'"([^"]+)"', re.search(r"^CMD (.+)$", DOCKERFILE, flags=re.M).group(1))
    )
    readme = (REPO / "README.md").read_text()
    assert re.search(rf"^{re.escape(cmd)}\s+# the tests", readme, flags=re.M), cmd
    assert cmd in (REPO / ".ci" / "run").read_text()  # CI, the README and the image agree
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".minislurm" in ignored  # never copy a host's venv or cluster


def test_dockerfile_builds_on_debian_12_with_the_environment_before_the_code():
    # debian:12 is what `make container` can make from Debian's archive where no registry answers
    assert re.search(r"^FROM debian:12$", DOCKERFILE, flags=re.M), "the base must be debian:12"
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)  # continuation lines as one
    steps = re.findall(r"^(COPY|RUN) (.+)$", joined, flags=re.M)
    # the whole stack, the [peers] extra included: the image's CMD is the whole suite
    env = next(
        i for i, (k, v) in enumerate(steps) if k == "RUN" and v.endswith("make env peers-env")
    )
    assert "--mount=type=cache,target=/root/.cache/pip" in steps[env][1]  # Horovod's wheel kept
    code = steps.index(("COPY", ". ."))
    assert env < code, "the environment must be built before the code is copied"
    assert not any(
        k == "COPY" and re.search(r"(^| )(lhccnn|tests|notebooks)/?( |$)", v)
        for k, v in steps[:code]
    ), "code copied before the environment: every edit rebuilds it"


def test_ci_runs_the_container_after_the_suite():
    lines = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()]
    assert lines.index("make container-test") > lines.index("make test")
    make = (REPO / "Makefile").read_text()
    assert re.search(r"^container-test: .*\bcontainer\b", make, flags=re.M)  # builds what it tests


def test_entrypoint_runs_a_command_in_its_own_mini_slurm(slurm, tmp_path):
    env = dict(
        os.environ,
        MINISLURM_STATE=str(tmp_path / "state"),
        MINISLURM_NODES="2",
        MINISLURM_CTLD_PORT="16917",
        MINISLURM_NODE_PORT="17101",
    )
    env.pop("SLURM_CONF", None)  # the entrypoint points the command at its own cluster
    out = subprocess.run(
        [
            str(REPO / "recipes" / "minislurm" / "entrypoint.sh"),
            "bash",
            "-c",
            'srun -N2 -n2 bash -c "echo \\$SLURMD_NODENAME" && echo "conf=$SLURM_CONF" && exit 3',
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 3, out.stdout + out.stderr  # the command's status, the cluster stopped
    assert sorted(out.stdout.split()[:2]) == ["node1", "node2"], out.stdout
    assert f"conf={tmp_path / 'state' / 'slurm.conf'}" in out.stdout
    status = subprocess.run(
        [str(REPO / "recipes" / "minislurm" / "minislurm.sh"), "status"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert status.returncode != 0  # stopped again: no daemon of its own left
