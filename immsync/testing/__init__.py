"""Test doubles shipped with immsync: an ImmPort API emulator and a stand-in ``ascp``.

They exist so that the demo, immsync's own tests and users' pipelines can exercise
the real HTTP and subprocess code paths offline. See ``immsync.testing.emulator``
and ``immsync.testing.fake_ascp``.
"""
