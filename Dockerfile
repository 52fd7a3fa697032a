# The tutorial's container: Debian 12, Python 3.11, the pinned stack with Horovod, and the mini
# SLURM cluster started by the entrypoint. Build: docker build -t lhccnn .
# Run the tests: docker run --rm lhccnn        Run anything else: docker run --rm lhccnn make all
FROM python:3.11-slim-bookworm

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1
WORKDIR /lhccnn
COPY recipes/minislurm/install.sh recipes/minislurm/install.sh
RUN recipes/minislurm/install.sh && rm -rf /var/lib/apt/lists/*

# The environment first (slow: Horovod builds from source), so code changes rebuild only the tail.
COPY constraints.txt pyproject.toml Makefile README.md ./
COPY lhccnn/__init__.py lhccnn/__init__.py
RUN make env
COPY . .
RUN make data

# The entrypoint starts munge + slurmctld + slurmd nodes, then runs the command.
ENTRYPOINT ["recipes/minislurm/entrypoint.sh"]
CMD ["make", "test"]
