"""``python -m batterytwin``."""

from batterytwin.cli import main

main()
