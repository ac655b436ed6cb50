import sys

from openxpu_runtime.smi import main

sys.exit(main())
