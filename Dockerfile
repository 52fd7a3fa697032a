# The tutorial's container: Debian 12, its Python 3.11, the pinned stack with Horovod, and the mini
# SLURM cluster started by the entrypoint. Build: docker build -t lhccnn .   (or: make container)
# Run the tests: docker run --rm lhccnn        Run anything else: docker run --rm lhccnn make all
# Plain Debian, not python:3.11-slim: its Python is 3.11, and where no registry is reachable
# `make container` makes this base itself with debootstrap (recipes/minislurm/container.sh).
FROM debian:12

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /lhccnn
COPY recipes/minislurm/install.sh recipes/minislurm/install.sh
RUN recipes/minislurm/install.sh && rm -rf /var/lib/apt/lists/*

# The environment first (slow: Horovod builds from source), so code changes rebuild only the tail;
# pip's cache survives between builds, so a changed constraint does not rebuild Horovod's wheel.
# Behind a TLS-intercepting proxy pip needs the host's CA bundle: `make container` passes it as
# the secret "cacert" (docker build --secret id=cacert,src=FILE), never stored in the image.
# README.md is only the package's long description here: an empty stand-in keeps edits of the
# docs from rebuilding the environment (COPY . . brings the real one). The [peers] extra (Ray
# Tune, Optuna) is installed too: the image's CMD is the whole suite, whose peer benchmark needs it.
COPY constraints.txt pyproject.toml Makefile ./
COPY lhccnn/__init__.py lhccnn/__init__.py
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=cacert \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi; touch README.md && make env peers-env
COPY . .
# The layer above is reused while its files' contents are unchanged, but make compares times, and a
# fresh clone's files are newer than its stamps: mark the environment current (in this order, as
# make needs), or every later make would reinstall it, without the proxy CA the build was given.
RUN touch .venv/.installed && touch .venv/.peers && make data

# The entrypoint starts munge + slurmctld + slurmd nodes, then runs the command.
ENTRYPOINT ["recipes/minislurm/entrypoint.sh"]
CMD ["make", "test"]
