"""`python -m kzoo.cli.rate ...`: `kzoo rate` without the `kzoo` command."""

import sys

from kzoo.cli.rate import main

sys.exit(main())
