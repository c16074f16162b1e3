"""Gates over results: the regression comparison, ``unlearn regress``, the pull-request check, the Markdown summary and the leaderboard refresh."""
