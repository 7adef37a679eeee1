"""Benchmark settings: the real settings plus one bare Django view, the baseline, on the same server.

Run the server with DJANGO_SETTINGS_MODULE=tests.bench.settings; BENCH_BARE_DIR is where the bare
view stores what it receives (and where Django spools it first, so storing is a rename).
"""

from __future__ import annotations

import os

from backend.settings import *  # noqa: F403

ROOT_URLCONF = "tests.bench.urls"
BENCH_BARE_DIR = os.environ.get("BENCH_BARE_DIR", "")
# Django's own spool for the bare view: on the same filesystem, as a real deployment would have it.
FILE_UPLOAD_TEMP_DIR = BENCH_BARE_DIR or None
