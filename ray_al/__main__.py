import sys

from ray_al.cli import main

sys.exit(main())
