"""bufbroker's daemon (import name ``broker``).

It imports the SDK's protocol modules (``bufbroker.v1``, ``bufbroker.fdwire``);
the SDK never imports it.
"""

from bufbroker import __version__

__all__ = ["__version__"]
