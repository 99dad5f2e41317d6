"""How pfsfs starts its own Python processes: the daemon, its mount workers, the pipeline
scheduler and the index salvager.

``python -m MODULE`` puts the current working directory first on ``sys.path``. The daemon is
started from wherever the user happens to run ``pfsfs mount`` (a clone holding a ``pfsfs/``
folder, a shared /tmp, a downloaded data set), so that directory would shadow the installed
package: a harmless ``pfsfs/`` folder breaks the start-up, and a planted ``pfsfsd/__main__.py``
would run as the daemon, usually as root. So every child is started with ``-P`` (Python 3.11+:
do not prepend the working directory, nor the script's) and in ``/`` (``CHILD_CWD``), where a
relative ``PYTHONPATH`` entry can only name root-owned paths and no user directory is kept busy.

Not ``-I`` (isolated mode): it would also drop ``PYTHONPATH`` and the user site-packages, which
are how some people install pfsfs (``pip install --user``, a checkout on ``PYTHONPATH``), and the
daemon would then not find the package the CLI itself runs from.
"""

from __future__ import annotations

import sys

#: The working directory of every Python child pfsfs starts (their paths are all absolute).
CHILD_CWD = "/"


def python_module_argv(module: str, *args: str) -> list[str]:
    """The argv that runs ``module`` of the installed packages with this interpreter, never
    importing anything from the working directory."""
    return [sys.executable, "-P", "-m", module, *args]
