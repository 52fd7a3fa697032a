"""The %ipcluster line magic: start, inspect and stop an IPyParallel cluster on SLURM."""

from __future__ import annotations

import argparse
import shlex

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from .cluster import Cluster, ClusterError, ClusterSpec
from .slurm import SlurmError

USAGE = """\
%ipcluster start [-N NODES] [-n ENGINES] [-t TIME] [-C CONSTRAINT] [-q QOS] [-p PARTITION]
                 [-A ACCOUNT] [--mpi] [--wait SECONDS] [--local]
%ipcluster status
%ipcluster stop"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="%ipcluster",
        usage=USAGE.replace("%", "%%"),
        exit_on_error=False,
        description="Start an IPyParallel cluster whose engines run in a "
        "SLURM allocation, show it, stop it.",
    )
    sub = p.add_subparsers(dest="cmd")
    s = sub.add_parser(
        "start",
        prog="%ipcluster start",
        exit_on_error=False,
        help="allocate nodes, start controller and engines, wait, connect, enable %%px",
    )
    s.add_argument("-N", "--nodes", type=int, default=1, help="nodes (default 1)")
    s.add_argument(
        "-n", "--engines", type=int, default=None, help="engines (default: one per node)"
    )
    s.add_argument("-t", "--time", default="00:30:00", help="time limit (default 00:30:00)")
    s.add_argument("-C", "--constraint", help="node features, e.g. cpu or gpu on Perlmutter")
    s.add_argument("-q", "--qos", help="e.g. interactive or debug")
    s.add_argument("-p", "--partition")
    s.add_argument("-A", "--account", help="default: $SBATCH_ACCOUNT")
    s.add_argument("--mpi", action="store_true", help="engines as one MPI job (for Horovod)")
    s.add_argument(
        "--wait",
        type=float,
        default=120.0,
        help="seconds to wait for the allocation and the engines (default 120)",
    )
    s.add_argument("--local", action="store_true", help="engines on this machine, without SLURM")
    sub.add_parser("status", prog="%ipcluster status", help="job, state, nodes, engines")
    sub.add_parser(
        "stop", prog="%ipcluster stop", help="stop engines and controller, cancel the job"
    )
    return p


def _parse(line: str) -> argparse.Namespace:
    try:
        args = _parser().parse_args(shlex.split(line))
    except SystemExit:  # -h / --help printed the help already
        return None
    except (argparse.ArgumentError, ValueError) as e:
        raise UsageError(f"{e}\nusage:\n{USAGE}") from None
    if args.cmd is None:
        raise UsageError(f"say what to do\nusage:\n{USAGE}")
    return args


def cluster_options(line: str) -> dict:
    """ClusterSpec keywords from %ipcluster-style SLURM options, e.g. "-t 00:30:00 -C cpu -q debug".

    Lets a notebook keep one `slurm_options` string for the magic and for the Python API.
    """
    args = _parse("start " + line)
    return {
        k: getattr(args, k) for k in ("time", "constraint", "qos", "partition", "account", "wait")
    }


def format_status(info: dict) -> str:
    lines = [
        f"job {info['job_id'] or '-'}  state {info['state']}  nodes {info['nodes'] or '-'}",
        f"{len(info['engines'])} engines:",
    ]
    lines += [
        f"  engine {e['id']}: host {e['host']}  node {e['slurm_node'] or '-'}  pid {e['pid']}"
        for e in info["engines"]
    ]
    return "\n".join(lines)


@magics_class
class ClusterMagics(Magics):
    """Holds the notebook's one cluster; `%ipcluster start` returns it as well."""

    cluster: Cluster | None = None

    @line_magic
    def ipcluster(self, line: str):
        args = _parse(line)
        if args is None:
            return None
        return getattr(self, f"_{args.cmd}")(args)

    def _start(self, a):
        if self.cluster is not None and not self.cluster.stopped:
            raise UsageError("a cluster is already running: %ipcluster stop first")
        try:
            spec = ClusterSpec(
                nodes=a.nodes,
                engines=a.engines,
                time=a.time,
                constraint=a.constraint,
                qos=a.qos,
                partition=a.partition,
                account=a.account,
                mpi=a.mpi,
                wait=a.wait,
                local=a.local,
            )
        except ValueError as e:
            raise UsageError(f"{e}\nusage:\n{USAGE}") from None
        where = "on this machine" if spec.local else f"on {spec.nodes} SLURM node(s)"
        print(f"starting {spec.n} engine(s) {where}{' as one MPI job' if spec.mpi else ''}...")
        try:
            self.cluster = Cluster.start(spec, activate=True)
        except (ClusterError, SlurmError) as e:
            raise UsageError(str(e)) from None
        job = f" (SLURM job {self.cluster.job_id})" if self.cluster.job_id else ""
        print(
            f"{spec.n} engines ready in {self.cluster.started_seconds:.1f} s{job}; "
            "%px and %%px now run on all of them"
        )
        return self.cluster

    def _status(self, a):
        if self.cluster is None:
            print("no cluster: %ipcluster start first")
            return None
        info = self.cluster.status()
        print(format_status(info))
        return None

    def _stop(self, a):
        if self.cluster is None or self.cluster.stopped:
            print("no cluster running")
            return None
        job = self.cluster.job_id
        try:
            seconds = self.cluster.stop()
        except ClusterError as e:  # says what may be left; the cluster is kept, to stop again
            raise UsageError(f"{e}\nrun %ipcluster stop again once SLURM answers") from None
        left = f"; job {job} ended, nothing left in the queue" if job else ""
        print(f"cluster stopped in {seconds:.1f} s{left}")
        return None


def load_ipython_extension(ipython):
    """%load_ext lhccnn.magics (a kernel's exit stops the cluster: Cluster.start uses atexit)"""
    ipython.register_magics(ClusterMagics(ipython))
