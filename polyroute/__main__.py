"""``python -m polyroute`` is the CLI."""

from __future__ import annotations

from polyroute.cli import main

raise SystemExit(main())
