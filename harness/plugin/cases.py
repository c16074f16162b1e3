"""The test function every metric case runs (parametrized by ``harness.plugin.hooks``).

Collected only when pytest is given ``--unlearn-submission``; its ids read like
``test_metric[toy-canvas::UA::striped]``.
"""

from harness.plugin.hooks import check_case


def test_metric(unlearn_case, unlearn_evaluator, request):
    check_case(unlearn_case, unlearn_evaluator, request)
