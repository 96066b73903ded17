"""`python -m claimsutil.meds validate|clean ...`: see `claimsutil.meds.cli`."""

import sys

from claimsutil.meds.cli import main

sys.exit(main())
