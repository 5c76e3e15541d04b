"""The command line behind ``python -m thespian_dd`` (and the ``thespian-dd`` script): the
argument parser in :mod:`~thespian_dd._cli.main` and one module per command.  Nothing here is
public.
"""
