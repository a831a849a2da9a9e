import sys

from likeness.cli import main

sys.exit(main())
