import sys

from gpuadmit.cli import main

sys.exit(main())
