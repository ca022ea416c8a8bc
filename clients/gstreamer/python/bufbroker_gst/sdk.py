"""Make ``import bufbroker`` work under GStreamer's Python plugin loader.

The loader runs the system Python (Debian: /usr/bin/python3, where ``gi``
is), not the project's venv, so the SDK and its dependencies (grpcio,
protobuf) are not on its path. In order, the first that imports wins:

1. ``BUFBROKER_PYTHONPATH`` (dirs separated by ``:``), put in front of
   ``sys.path``: e.g. a venv's site-packages of the same Python version.
2. ``bufbroker`` as the loader's Python already finds it (``pip install``
   for that Python).
3. From a checkout: the repo's ``clients/python`` and, when its Python
   version is the loader's, ``.venv/lib/pythonX.Y/site-packages``. Only
   the dir is added (its ``.pth`` files are not run), so the venv's
   editable-install hooks do not run inside every GStreamer process.

Compiled wheels (grpcio) are built for one Python minor version, hence
the version check rather than adding any venv found.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]  # clients/gstreamer/python/bufbroker_gst/sdk.py -> the checkout
ENV = "BUFBROKER_PYTHONPATH"
PROBE = "bufbroker.session"  # imports grpc and protobuf too


def checkout_paths(repo: Path = REPO) -> list[str]:
    """The dirs that make a checkout's SDK importable by this Python ([] if it is not a checkout)."""
    sdk = repo / "clients" / "python"
    if not (sdk / "bufbroker" / "__init__.py").is_file():
        return []
    paths = [str(sdk)]
    site = repo / ".venv" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    if site.is_dir():
        paths.append(str(site))
    return paths


def _forget_failed_imports() -> None:
    """Drop half-imported modules so the next sys.path is tried afresh."""
    for name in list(sys.modules):
        if name == "bufbroker" or name.startswith(("bufbroker.", "grpc", "google.protobuf")):
            del sys.modules[name]


def _try(paths: list[str]) -> bool:
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        importlib.import_module(PROBE)
    except ImportError:
        _forget_failed_imports()
        return False
    return True


def why_not(error: BaseException) -> str:
    """The message for an SDK this Python cannot import, with what to do."""
    venvs = sorted(str(p.parent.name) for p in (REPO / ".venv" / "lib").glob("python*/site-packages"))
    hint = f" (the checkout's venv is for {', '.join(venvs)})" if venvs else ""
    sdk = (
        REPO / "clients" / "python"
        if (REPO / "clients" / "python" / "bufbroker").is_dir()
        else "<checkout>/clients/python"
    )
    return (
        f"the bufbroker GStreamer elements cannot import the bufbroker SDK under {sys.executable} "
        f"(Python {sys.version_info.major}.{sys.version_info.minor}){hint}: {error}. "
        f"Set {ENV} to dirs holding bufbroker, grpcio and protobuf for this Python "
        f"(e.g. {sdk}:<a Python {sys.version_info.major}.{sys.version_info.minor} venv>"
        "/lib/pythonX.Y/site-packages), or pip install bufbroker for it"
    )


def ensure_sdk() -> None:
    """Make ``bufbroker`` importable (see the module docstring); ImportError saying what to do if it cannot be."""
    explicit = [path for path in os.environ.get(ENV, "").split(os.pathsep) if path]
    if explicit:
        if _try(explicit):
            return
        try:
            importlib.import_module(PROBE)
        except ImportError as error:
            raise ImportError(why_not(error) + f" ({ENV}={os.environ[ENV]!r} did not help)") from error
    if _try([]) or _try(checkout_paths()):
        return
    try:
        importlib.import_module(PROBE)
    except ImportError as error:
        raise ImportError(why_not(error)) from error
