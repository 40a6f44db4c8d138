"""Run the demo as a cluster job (the scheduler flags every lseg launcher shares) and say how to reach it.

Why a job, a file and a tunnel: GPU nodes are rarely reachable from a laptop, and the demo binds to
loopback unless told otherwise. The job writes where it listens (node, port) to a small JSON file
next to its logs; the submitting command waits for that file and prints the ``ssh -L`` command.
A loopback server is reached through the login node as a jump host; one bound to another address
(``--host 0.0.0.0``) through a plain tunnel via the login node.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import time
from pathlib import Path

from lseg.app.core import AppSettings

#: The job's ``<job id>_app.json`` in the submitit folder: {"node", "host", "port", "job_id", "cluster",
#: "pid"}.
ADDRESS_SUFFIX = "_app.json"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class SubmitError(RuntimeError):
    """The app job could not be submitted or did not start; one line."""


def tunnel_command(node: str, port: int, host: str, login: str) -> str:
    """The laptop's ``ssh`` command that makes ``http://localhost:PORT`` reach the app on ``node``."""
    if host in LOOPBACK:
        return f"ssh -N -L {port}:localhost:{port} -J {login} {node}"
    return f"ssh -N -L {port}:{node}:{port} {login}"


def describe_address(address: dict, login: str) -> str:
    """What to tell the user once the app listens (printed by the job and by the submitter)."""
    node, port, host, job = address["node"], int(address["port"]), address["host"], address["job_id"]
    if address["cluster"] != "slurm":  # submitit's local executor: a process on this machine
        shown = "localhost" if host in ("0.0.0.0", "::") else host
        # SIGINT: submitit's job process ignores SIGTERM (Slurm's preemption warning).
        return f"app job {job} serves on http://{shown}:{port}\n  stop it: kill -INT {address['pid']}"
    return (f"app job {job} serves on {node}:{port}\n"
            f"  from your laptop:  {tunnel_command(node, port, host, login)}\n"
            f"  then open:         http://localhost:{port}\n"
            f"  stop it:           scancel {job}")


class AppJob:
    """The submitted callable: serve the demo on the node, after publishing its address."""

    def __init__(self, settings: AppSettings, folder: str) -> None:
        self.settings = settings
        self.folder = folder

    def __call__(self) -> None:
        import submitit

        from lseg.app.ui import run_app

        env = submitit.JobEnvironment()

        def ready(host: str, port: int) -> None:
            address = {"node": socket.gethostname(), "host": host, "port": port, "job_id": str(env.job_id),
                       "cluster": env.cluster, "pid": os.getpid()}
            path = Path(self.folder) / f"{env.job_id}{ADDRESS_SUFFIX}"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(address))
            os.replace(tmp, path)  # the submitter never reads half a file
            login = os.environ.get("SLURM_SUBMIT_HOST", "LOGIN-NODE")
            print(describe_address(address, login), flush=True)

        run_app(self.settings, on_ready=ready)


def submit_app(settings: AppSettings, args: argparse.Namespace, poll_s: float = 2.0) -> dict:
    """Submit the app with the scheduler flags in ``args``; wait until it listens and print how to reach it.

    Returns the address record. One task on one node: a second task would start a second server.
    """
    from lseg.launch import make_executor, sbatch_script

    if args.nodes != 1:
        raise SubmitError(f"the demo runs on one node, got --nodes {args.nodes}")
    args.ntasks_per_node = 1
    folder = Path(args.logs_dir).resolve()
    if args.dry_run:
        print(sbatch_script(args, folder, "lseg-app"))
        print("# app:", json.dumps({**vars(settings), "limits": vars(settings.limits)}))
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    executor = make_executor(args, folder, "lseg-app")  # LaunchError: bad flags, no Slurm here
    try:
        job = executor.submit(AppJob(settings, str(folder)))
    except RuntimeError as exc:  # sbatch refused the job (partition, account, ...)
        raise SubmitError(f"submission failed: {' '.join(str(exc).split())[:300]}") from None
    print(f"submitted app job {job.job_id}; log: {job.paths.stdout}", flush=True)
    print("waiting for it to start (Ctrl-C stops waiting, not the job)", flush=True)
    path = folder / f"{job.job_id}{ADDRESS_SUFFIX}"
    while not path.is_file():
        if job.done():
            raise SubmitError(f"app job {job.job_id} ended before serving; see {job.paths.stderr}")
        time.sleep(poll_s)
    address = json.loads(path.read_text())
    print(describe_address(address, socket.getfqdn()), flush=True)
    return address
