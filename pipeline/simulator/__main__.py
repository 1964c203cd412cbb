"""`python -m pipeline.simulator` (the same as `pipeline simulate`)."""

import sys

from pipeline.simulator.running import main

sys.exit(main())
