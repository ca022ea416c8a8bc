import sys

from bench.runner import cli

sys.exit(cli())
