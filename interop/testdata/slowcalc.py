"""A calculator registry for `aserpc worker SlowLJ --registry slowcalc.py:CALCULATORS`.

SlowLJ is ASE's LennardJones that sleeps INTEROP_SLOW_SECONDS inside
calculate, so one calculation outlasts the broker's worker timeout and the
worker must keep itself alive with BUSY. The result is LennardJones's own.
"""

import os
import time

from ase.calculators.lj import LennardJones


class SlowLJ(LennardJones):
    def calculate(self, *args, **kwargs):
        time.sleep(float(os.environ.get("INTEROP_SLOW_SECONDS", "3")))
        super().calculate(*args, **kwargs)


CALCULATORS = {"SlowLJ": SlowLJ}
