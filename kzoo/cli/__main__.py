"""`python -m kzoo.cli ARGS` is `kzoo ARGS`."""

import sys

from kzoo.cli.main import main

sys.exit(main())
