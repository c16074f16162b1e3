"""Gates over results: the regression comparison, ``unlearn regress``, the pull-request check, the Markdown summary, the image page of one run (``images``) and the leaderboard refresh."""
