"""``python -m search ...`` and the entry script for ``ray submit``.

``ray submit cluster.yaml search/__main__.py -- run spaces/pcam.yaml`` copies this one
file to the head and runs it there from the home folder. Run as a file like that, it
first changes into the project checkout the cluster installed (``$MEDTUNE_HOME``), so
relative paths such as ``spaces/pcam.yaml`` mean what they mean here, and ``run`` joins
the running cluster (``--address auto``) unless told otherwise.
"""

from __future__ import annotations

import os
import sys


def submitted_argv(argv: list[str]) -> list[str]:
    """The arguments of a submitted ``run``, with ``--address auto`` added when missing."""
    if argv[:1] == ["run"] and not any(a == "--address" or a.startswith("--address=") for a in argv):
        return [*argv, "--address", "auto"]
    return argv


if __name__ == "__main__":
    argv = sys.argv[1:]
    if not __package__:  # run as a file (ray submit), not as `python -m search`
        home = os.environ.get("MEDTUNE_HOME")
        if not home or not os.path.isdir(home):
            sys.exit(f"error: MEDTUNE_HOME is {home!r}, not the project checkout; run this on a node set up by "
                     "cluster.yaml (it exports MEDTUNE_HOME in ~/.medtune_env)")
        os.chdir(home)
        sys.path.insert(0, home)
        argv = submitted_argv(argv)
    from search.cli import main

    sys.exit(main(argv))
