"""Spawn configs for compose.yaml's manager: `aserpc manager --registry /etc/aserpc/spawn.py:CONFIGS`.

The manager starts these workers inside its own container (the base image: ase, LJ and EMT) when
requests arrive for a calculator with no worker, and stops them after idle_timeout: scale from
zero. Models in other images run as compose services of their own (worker-mace, ...).
"""

CONFIGS = {
    "EMT": {
        "name": "EMT",
        "command": ["aserpc", "worker", "EMT", "--name", "{name}", "--broker", "{broker}",
                    "--idle-timeout", "{idle_timeout}"],
        "idle_timeout": 120.0,
        "max_workers": 2,
        "start_timeout": 60,
    },
}
