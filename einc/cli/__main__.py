"""``python -m einc.cli``: the same as the ``einc`` console script."""

from . import main

main()
