"""The test run executes the notebooks (nbmake) on the CPU: their first code cell reads this
variable, where a user's runtime uses its accelerator."""

import os

os.environ.setdefault('TRANSFORMER_NOTEBOOK_CPU', '1')
