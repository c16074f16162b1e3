"""The ``unlearn`` command: ``main`` (parser, dispatch) and the command groups over inputs, runs and the toy world."""
