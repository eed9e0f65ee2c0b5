"""A registry file (``--registry path/reg_file.py:CALCS``); partial factories have no __qualname__."""
import functools

from ase.calculators.lj import LennardJones

CALCS = {
    "FileLJ": functools.partial(LennardJones, sigma=0.95, epsilon=1.1),
    "PlainLJ": LennardJones,
}
