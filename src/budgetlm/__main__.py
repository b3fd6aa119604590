"""`python -m budgetlm` is the same as the `budgetlm` command."""

import sys

from budgetlm.cli import main

sys.exit(main())
