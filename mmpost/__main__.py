"""``python -m mmpost``: the mmpost command (also how torchrun and deepspeed launch training)."""

import sys

from mmpost import main

sys.exit(main())
