import sys

from disagglab.cli import main

sys.exit(main())
