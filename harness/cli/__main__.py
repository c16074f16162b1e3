"""``python -m harness.cli``: the ``unlearn`` command."""
from harness.cli.main import main

raise SystemExit(main())
