"""`python -m agent` is the same program as the `sync-agent` command."""
from .cli import main

raise SystemExit(main())
