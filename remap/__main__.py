import sys

from .cli import main

sys.exit(main(quick_exit=True))
