"""Entry point for `python -m client_extractor` and for the PyInstaller binary."""

import sys

from client_extractor.cli import main

if __name__ == "__main__":
    sys.exit(main())
