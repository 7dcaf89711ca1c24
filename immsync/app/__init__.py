"""The wiring between the command line and the library.

``config`` reads the environment and makes the ImmPort client, ``transport`` picks how
files travel, ``run`` puts one run together. ``immsync.cli`` holds typer commands only
and renders what these return.
"""
