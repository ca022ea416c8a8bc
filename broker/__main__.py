"""`python -m broker` is the `bufbroker` command."""

import sys

from broker.cli import main

sys.exit(main())
