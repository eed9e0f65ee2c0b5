"""Spawns a multiprocessing child; importable by name, as pickling to a spawn child requires."""
import multiprocessing
import sys


def spawn_child():
    """A multiprocessing 'spawn' child: it must start the environment's own python."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_child_info)


def _child_info():
    import ase

    return {"executable": sys.executable, "prefix": sys.prefix, "ase": ase.__version__}
