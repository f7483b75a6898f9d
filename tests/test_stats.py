"""Plain pytest checks of vtom.stats: the bootstrap, McNemar's exact test and paired comparisons (by hand, against scipy)."""
import math

import numpy as np
import pytest

from vtom.stats import StatsError, bootstrap_ci, markdown_table, mcnemar_exact, paired_comparison


def test_bootstrap_ci_covers_mean():
    x = np.r_[np.ones(60), np.zeros(40)]
    lo, hi = bootstrap_ci(x)
    assert lo < 0.6 < hi and bootstrap_ci(x) == (lo, hi)


def test_mcnemar_exact_by_hand_and_against_scipy():
    assert mcnemar_exact([1] * 5 + [0], [0] * 6) == 0.0625                 # 2 * (1/2)^5
    assert mcnemar_exact([1, 1, 1, 0, 1], [0, 0, 0, 1, 1]) == 0.625        # 2 * (C(4,0) + C(4,1)) / 2^4
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0                      # no discordant pair
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.random(60) < 0.6, rng.random(60) < 0.4
        n01, n10 = int((a & ~b).sum()), int((~a & b).sum())
        assert math.isclose(mcnemar_exact(a, b), stats.binomtest(n01, n01 + n10, 0.5).pvalue, rel_tol=1e-9)


def test_paired_ci_by_hand():
    # two videos, A - B = 1 on one and 0 on the other: resampled means 0, 0.5, 1 with prob 1/4, 1/2, 1/4
    assert paired_comparison([1, 0], [0, 0], ["v1", "v2"]) == {
        "n": 2, "accuracy_a": 0.5, "accuracy_b": 0.0, "diff": 0.5, "ci95": [0.0, 1.0], "p_mcnemar": 1.0}
    # every video has the same difference 0.5: every resample gives 0.5
    assert paired_comparison([1, 1, 0, 1], [0, 1, 0, 0], ["v1", "v1", "v2", "v2"])["ci95"] == [0.5, 0.5]
    # clustering widens the interval when videos differ: 10 videos of 6 questions, A better on half the videos only
    a = [1] * 30 + [0] * 30
    b = [0] * 60
    vids = [f"v{i // 6}" for i in range(60)]
    by_video, by_question = paired_comparison(a, b, vids)["ci95"], paired_comparison(a, b, None)["ci95"]
    assert by_video[1] - by_video[0] > by_question[1] - by_question[0]


def test_bad_input_is_one_vtom_error():
    from vtom.core import VtomError
    with pytest.raises(StatsError, match="Nothing to bootstrap"): bootstrap_ci([])
    with pytest.raises(VtomError, match="2 cluster labels for 3 items"): bootstrap_ci([1, 0, 1], clusters=["a", "b"])
    with pytest.raises(StatsError, match="equally long"): paired_comparison([1, 0], [1], None)


def test_markdown_table_formats():
    assert markdown_table([{"a": 0.5, "b": (0.1, 0.2)}]) == "| a | b |\n|---|---|\n| 0.500 | [0.100, 0.200] |"
    assert markdown_table([{"x": float("nan"), "y": None}], digits=1).splitlines()[-1] == "|  |  |"
