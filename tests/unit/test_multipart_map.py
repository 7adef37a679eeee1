"""The multipart `map` parsing of the GraphQL view, on generated input: the spec's refusals are 400s.

The hostile-input suite sends generated bodies to a running server; this drives the same functions
with many more examples: whatever `operations`, `map` and file names arrive, the answer is either
the operations with the files in place or an HTTP 400, never another exception.
"""

from __future__ import annotations

import json
from typing import Any

from cross_web import HTTPException
from hypothesis import given, settings
from hypothesis import strategies as st

from schema.views import _parse_map, _replace_file_placeholders

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
_paths = st.lists(st.sampled_from(["variables", "file", "0", "1", "files", "query", "x"]), min_size=1, max_size=4).map(
    ".".join
)
_maps = st.one_of(
    st.dictionaries(st.sampled_from(["0", "1", "2"]), st.one_of(st.lists(_paths, max_size=3), _json), max_size=3).map(
        json.dumps
    ),
    _json.map(json.dumps),
    st.text(max_size=40),
    st.just('{"0": ["variables.file"], "0": ["variables.file"]}'),
)
_operations = st.one_of(
    _json,
    st.just({"query": "q", "variables": {"file": None, "files": [None, None]}}),
    st.just([{"query": "q", "variables": {"file": None}}]),
)


@settings(max_examples=500, deadline=None)
@given(operations=_operations, map_text=_maps, files=st.sets(st.sampled_from(["0", "1", "2", "3"]), max_size=3))
def test_map_parsing_places_files_or_answers_400(operations: Any, map_text: str, files: set[str]) -> None:
    uploads = {name: object() for name in files}
    try:
        placed = _replace_file_placeholders(operations, _parse_map(map_text), uploads)
    except HTTPException as exc:
        assert exc.status_code == 400
        return
    # Accepted: every file is placed somewhere, and nothing but files replaced a placeholder.
    text = repr(placed)
    assert all(repr(upload) in text for upload in uploads.values())
