import sys

from openxpu_lab.cli import main

sys.exit(main())
