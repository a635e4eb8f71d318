"""`python -m spalstf.cli ...` (as torchrun runs it): the `spalstf` command."""

import sys

from spalstf.cli import main

sys.exit(main())
