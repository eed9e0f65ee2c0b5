"""Spawn configs for `aserpc manager --registry interop_spawn:CONFIGS`.

The reference manager imports its registry as a module, so this directory
goes on PYTHONPATH. The environment says where things are:
INTEROP_ASERPC is the reference venv's aserpc script and INTEROP_PIDS a file
to which every spawned process appends its pid (the test counts spawns with
it and kills the children, which the manager starts in sessions of their
own, when it ends).

LJ      a real reference worker, told the broker address by the manager.
Broken  a command that exits at once (the 0.1.3 manager still answers "ok").
"""

import os

from aserpc.spawn import SpawnConfig

_ASERPC = os.environ["INTEROP_ASERPC"]
_PIDS = os.environ["INTEROP_PIDS"]


def _sh(script: str) -> list[str]:
    # render_command formats every argument, so the script may hold no braces
    # other than the template's {broker}.
    return ["sh", "-c", f"echo $$ >> '{_PIDS}'; " + script]


CONFIGS = {
    "LJ": SpawnConfig(
        name="LJ",
        command=_sh(
            f"exec '{_ASERPC}' worker LJ --broker '{{broker}}' --heartbeat 0.2"
            " --idle-timeout 60 --log-level WARNING"
        ),
    ),
    "Broken": SpawnConfig(name="Broken", command=_sh("exit 1")),
}
