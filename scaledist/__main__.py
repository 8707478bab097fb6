import sys

from scaledist.cli import main

sys.exit(main())
