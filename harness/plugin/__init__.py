"""The pytest face of the harness: the hooks (``hooks``), the session state they share (``session``) and the test function every case runs (``cases``)."""
