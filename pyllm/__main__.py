"""``python -m pyllm``: see :mod:`pyllm.cli`."""
import sys

from .cli import main

sys.exit(main())
