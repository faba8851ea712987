"""`python -m eyecare.bench ...`, the same as `eyecare bench ...`."""
import sys

from .cli import main

sys.exit(main())
