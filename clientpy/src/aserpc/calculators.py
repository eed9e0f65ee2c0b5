"""aserpc's own ``aserpc.calculators`` entry-point provider: the built-in LJ and EMT.

The worker knows these two names even without this provider; registering them here makes an
installed aserpc (wheel, ``uvx --from aserpc``) list them as every other provider's calculators
are listed, and keeps aserpc 0.1.3's behaviour, whose package registered them the same way.
Loading it imports the ``aserpc`` package (the client: pyzmq, msgpack), which the wheel
depends on anyway; the calculators' own modules are imported only when a worker creates one.
"""

from typing import Any, Dict


def get_calculators() -> Dict[str, Dict[str, Any]]:
    """Calculator metadata by name: ``{"factory": "module:callable"}``."""
    return {
        "LJ": {"factory": "ase.calculators.lj:LennardJones"},
        "EMT": {"factory": "ase.calculators.emt:EMT"},
    }
