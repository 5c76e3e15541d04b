"""The test kit behind :mod:`thespian_dd.testing`: nodes in this process or as separate
processes, probes, chaos schedules and network namespaces.  Nothing here is public: import
from :mod:`thespian_dd.testing`.
"""
