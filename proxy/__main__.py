"""`python -m proxy` is the `edgecache` command."""
import sys

from .cli import main

sys.exit(main())
