"""Running the training scripts from another program (the experiment's sweep, the benchmark), as a user would.

The scripts live at the repository root; a run's output goes to a log file, and a failed run is reported with the
end of that log. Which configs to run is the caller's to know.
"""

import os
import resource
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from prefopt.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
ALGORITHMS = ("dpo", "kto", "simpo")
LOG_TAIL_LINES = 20


def training_script(algorithm: str) -> Path:
    """`dpo.py`, `kto.py` or `simpo.py`."""
    return REPO_ROOT / f"{algorithm}.py"


def run_logged(
    command: Sequence[str],
    log_path: str | Path,
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> resource.struct_rusage:
    """Run `command` with its output in `log_path`; its resource usage, or a `UserError` with the log's tail.

    The repository is on the child's `PYTHONPATH`, so that the scripts import `prefopt` from any directory. The usage
    is the child's own (and that of the processes it waited for): its `ru_maxrss` is their peak resident memory.
    """
    log_path = Path(log_path)
    child_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "TOKENIZERS_PARALLELISM": "false",
        **(env or {}),
    }
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=cwd, env=child_env, stdout=log, stderr=subprocess.STDOUT)
        # wait4 rather than wait: it also returns the child's resource usage.
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    if process.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-LOG_TAIL_LINES:])
        raise UserError(f"{what} failed (exit {process.returncode}); end of {log_path}:\n{tail}")
    return usage
