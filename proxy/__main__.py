"""`python -m proxy` is `runtap serve`."""

import sys

from .cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
