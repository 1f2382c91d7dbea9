"""Built-in complete classifiers: ``timm:*`` with its own head, ``robustbench:*``, ``file:*``
and ``py:*``."""
