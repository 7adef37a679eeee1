"""`python -m backend.client`: see `backend.client.cli`."""

from __future__ import annotations

from backend.client.cli import main

raise SystemExit(main())
