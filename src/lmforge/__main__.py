"""``python -m lmforge``: what launchers run (``torchrun ... -m lmforge run RECIPE``)."""

from lmforge.cli import main

main()
