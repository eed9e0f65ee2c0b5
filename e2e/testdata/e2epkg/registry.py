"""A registry module (``--registry e2epkg.registry:CALCS``)."""
import functools

from ase.calculators.lj import LennardJones

CALCS = {"ModLJ": functools.partial(LennardJones, sigma=1.05)}
