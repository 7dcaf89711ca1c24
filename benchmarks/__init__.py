"""immsync's benchmark suite: ``python -m benchmarks.run`` (``make bench``).

Every figure runs immsync the way users do, against the bundled ImmPort emulator and
the stand-in ``ascp`` on 127.0.0.1, and compares it with a reference measured side by
side in the same run. See ``BENCHMARKS.md`` for the results and what bounds each one.
"""
