"""`python -m bufbroker_broker` is the `bufbroker` command."""

import sys

from bufbroker_broker.cli import main

sys.exit(main())
