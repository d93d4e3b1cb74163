"""``python -m tce_ray.study``: the command line (:mod:`tce_ray.cli`)."""

import sys

from tce_ray.cli import main

sys.exit(main())
