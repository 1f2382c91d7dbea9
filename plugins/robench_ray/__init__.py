"""robench built-in plugin: the ``ray`` executor (grid jobs as Ray tasks).

Ray is optional: this package imports it only when a ``ray`` executor is built, so
``robench plugins`` lists the executor whether or not Ray is installed.
"""
