"""`make bench`: the performance figures of issue 11, each beside a baseline measured in the same run.

Run everything:      .venv/bin/python -m tests.bench
Run one figure:      .venv/bin/python -m tests.bench --only upload_answer
Several:             .venv/bin/python -m tests.bench --only server_rss,progress_latency
List the figures:    .venv/bin/python -m tests.bench --list

Benchmarks are not tests: nothing here is collected by pytest and nothing asserts a time. The
table is printed and merged into var/bench/results.json.
"""
