"""``python -m maskfit`` (and ``torchrun -m maskfit`` / ``accelerate launch -m maskfit``) run the CLI."""
import sys

from .cli import main

sys.exit(main())
