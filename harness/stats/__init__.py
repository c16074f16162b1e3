"""Statistics: intervals and verdicts (``intervals``), the regression gate's significance (``significance``) and a suite's detectable effect (``power``)."""
