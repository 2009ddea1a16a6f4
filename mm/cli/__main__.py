"""``python -m mm.cli``: the mmpost command (also how torchrun and deepspeed launch training)."""

import sys

from mm.cli import main

sys.exit(main())
