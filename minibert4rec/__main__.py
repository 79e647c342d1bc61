"""python -m minibert4rec ...: see cli.py."""
import sys

from .fast import command_uses_fast_kernels    # imports no NumPy
from .fast.threads import prefer_short_blas_spin

# The fast head wants OpenBLAS's idle threads to stop spinning quickly, which
# OpenBLAS reads only when NumPy loads it: decide before anything imports NumPy.
if command_uses_fast_kernels(sys.argv[1:]):
    prefer_short_blas_spin()

from .cli import main  # noqa: E402

raise SystemExit(main())
