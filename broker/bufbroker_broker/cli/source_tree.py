"""Find bench/ and examples/, which run from a source checkout and are not installed.

The wheel (and the container image built from it) carries only the daemon and
the SDK. `bufbroker bench` and `bufbroker example` need the checkout the
package was installed from in editable mode (`pip install -e .`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# broker/bufbroker_broker/cli/source_tree.py -> the checkout's root
CHECKOUT = Path(__file__).resolve().parents[3]


def import_from_checkout(package: str, command: str) -> None:
    """Make ``package`` (bench or examples) importable here and in child processes, or exit saying why."""
    if not (CHECKOUT / package / "__init__.py").is_file():
        sys.exit(
            f"bufbroker {command}: {package}/ is not installed with bufbroker; it runs from a source "
            f"checkout: clone the repository and `pip install -e .` there"
        )
    root = str(CHECKOUT)
    if root not in sys.path:
        sys.path.insert(0, root)
    path = os.environ.get("PYTHONPATH", "")
    if root not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = root + (os.pathsep + path if path else "")
