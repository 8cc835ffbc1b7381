"""`python -m mage_hf <command>` (what `accelerate launch -m mage_hf <command>` runs)."""

import sys

from .commands import main

if __name__ == "__main__":
    sys.exit(main())
