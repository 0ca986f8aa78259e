"""`python -m analytics ...`: the read commands, as `runtap runs|run|usage|sql|export|budgets`."""

import sys

from analytics.cli import main

sys.exit(main())
