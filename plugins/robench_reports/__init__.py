"""robench built-in plugin: reports.

Registers the ``csv``, ``md``, ``json`` and ``html`` reporters (see :mod:`.plugin`).  All of
them rank models with :func:`robench.leaderboard.build_leaderboard`.
"""
