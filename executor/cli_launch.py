"""What the executor's `helix` commands (`train`, `profile`) share on the command line: one-line user errors, and a
local torchrun that runs the command once per rank.

Run directly, such a command checks its arguments, then calls `launch_local_torchrun`, which starts
`python -m torch.distributed.run --standalone --nproc-per-node N -m <module> <the same arguments>`; under torchrun
(`under_torchrun()`) the command runs as one rank instead. Each rank gets `HELIX_THREADS_PER_RANK` threads, by
default the machine's cores divided by the local ranks, so N ranks do not oversubscribe the cores more than they
must. It imports no torch: the checks before a launch stay fast.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import typer
from rich.console import Console

log = logging.getLogger(__name__)

EXIT_USER_ERROR = 2
TORCHRUN_ENV = "TORCHELASTIC_RUN_ID"
"""Set by torchrun in every worker: its presence means this process is one rank of a launched job."""
THREADS_PER_RANK_ENV = "HELIX_THREADS_PER_RANK"


def user_error(message: str, param_hint: str | None = None) -> typer.Exit:
    """Print `error: HINT: MESSAGE` on stderr and return the exit (code 2) to raise: one line, no traceback."""
    where = f"{param_hint}: " if param_hint else ""
    Console(stderr=True, soft_wrap=True).print(f"error: {where}{message}", highlight=False, markup=False)
    return typer.Exit(EXIT_USER_ERROR)


def under_torchrun() -> bool:
    return bool(os.environ.get(TORCHRUN_ENV))


def threads_per_rank(nproc: int) -> int:
    """`HELIX_THREADS_PER_RANK`, or the cores shared out over the local ranks (at least 1)."""
    configured = os.environ.get(THREADS_PER_RANK_ENV)
    return int(configured) if configured else max(1, (os.cpu_count() or 1) // nproc)


def launch_local_torchrun(*, module: str, command: str, nproc: int, max_restarts: int = 0, activity: str) -> int:
    """torchrun on this machine, one process per local rank, each running `python -m module` with this process's
    arguments after `command`; returns torchrun's exit code.

    When a rank dies, torchrun stops the others (they would otherwise wait in a collective) and either restarts
    them all (`max_restarts`) or exits; a failure other than a user error gets one line naming `activity`."""
    args = sys.argv[sys.argv.index(command) + 1 :] if command in sys.argv else sys.argv[1:]
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        "--standalone",
        f"--max-restarts={max_restarts}",
        "-m",
        module,
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_rank(nproc))}
    log.info("launching %d local ranks: %s", nproc, " ".join(launch))
    code = subprocess.run(launch, env=env, check=False).returncode
    if code not in (0, EXIT_USER_ERROR):
        Console(stderr=True, soft_wrap=True).print(
            f"error: {activity} stopped: a rank failed (torchrun exit code {code}); its error is reported above",
            highlight=False,
            markup=False,
        )
    return code
