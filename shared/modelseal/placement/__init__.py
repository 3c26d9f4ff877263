"""Where plaintext may go, and whether it will fit there: one package for the rule.

    tmpfs.py      the memory-only rule: tmpfs or ramfs, decided on the descriptor written through
    mounts.py     the mount table (which filesystem a descriptor is on, where a cgroup is mounted)
    cgroup.py     this container's memory limit and CPU quota
    need.py       what a stage will leave on its target (Need), from a .seal header or a length
    preflight.py  the check before the first write: room on the filesystem and under the memory limit
    pods.py       the memory limits and volume sizes a sealed model needs, per stage shape
    advice.py     `inspect --resources`: pods.py's numbers as YAML

The preflight, `inspect --resources` and an injection into a workload all
size a model by need.py's one rule; shapes() turns a sealed header (and the
payload's length) into every number of each stage shape, which advice.py
and an injector only format.
"""

from .need import Need, file_need, tree_need
from .pods import Shapes, shapes, tree_shapes
from .preflight import Preflight

__all__ = ["Need", "Preflight", "Shapes", "file_need", "shapes", "tree_need", "tree_shapes"]
