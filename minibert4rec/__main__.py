"""python -m minibert4rec ...: see cli.py."""
from .cli import main

raise SystemExit(main())
