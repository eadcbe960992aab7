"""The verdict machinery on small synthetic numbers: every outcome of a check, every path
to a verdict (inconclusive included), the convergence and ceiling detectors on synthetic
curves, seed sizing and the sequential plan."""

from __future__ import annotations

import math

import numpy as np
import pandas
import pytest

from studies.report import stats
from studies.report.stats import Check, Estimate, SeedPlan


def _check(low, high, threshold=3.0, kind="at_least", decisive=True, blockers=(), n=8):
    return Check(
        name=f"{kind} {low}..{high}", effect=Estimate((low + high) / 2, low, high, n),
        threshold=threshold, kind=kind, why="synthetic", decisive=decisive, blockers=blockers,
    )


@pytest.mark.parametrize(
    "kind, low, high, expected",
    [
        ("at_least", 3.0, 5.0, "holds"),  # low end at the threshold still holds
        ("at_least", 0.5, 2.9, "fails"),
        ("at_least", 1.7, 6.7, "undecided"),  # a C4 interval that spans 0 and 3 pp
        ("at_most", -1.0, 3.0, "holds"),
        ("at_most", 3.1, 4.0, "fails"),
        ("at_most", 2.0, 4.0, "undecided"),
        ("within", -2.9, 2.9, "holds"),  # an equivalence test
        ("within", 3.0, 4.0, "fails"),
        ("within", -5.0, -3.0, "fails"),
        ("within", -1.0, 3.5, "undecided"),
    ],
)
def test_check_outcome_follows_the_interval_against_the_threshold(kind, low, high, expected):
    check = _check(low, high, kind=kind)
    assert check.outcome() == expected
    assert check.to_dict()["outcome"] == expected


def test_check_is_undecided_when_blocked_or_without_an_interval():
    assert _check(4.0, 5.0, blockers=("not converged: norm=batch",)).outcome() == "undecided"
    assert _check(4.0, 5.0, n=1).outcome() == "undecided"
    assert Check("x", Estimate(4.0, math.nan, math.nan, 5), 3.0, "at_least", "w").outcome() == "undecided"


def test_check_rejects_an_unknown_kind_and_a_nonpositive_equivalence_margin():
    with pytest.raises(ValueError, match="kind"):
        _check(1, 2, kind="greater")
    with pytest.raises(ValueError, match="threshold"):
        _check(1, 2, kind="within", threshold=0.0)


@pytest.mark.parametrize(
    "outcomes, expected",
    [
        ([("holds", True), ("holds", True)], "supported"),
        ([("holds", True), ("fails", False)], "partly supported"),
        ([("holds", True), ("undecided", False)], "supported"),
        ([("holds", True), ("fails", True)], "partly supported"),
        ([("fails", True), ("fails", True), ("holds", False)], "not supported"),
        ([("holds", True), ("undecided", True)], "inconclusive"),
        ([("fails", True), ("undecided", True)], "inconclusive"),
    ],
)
def test_verdict_from_checks_covers_every_path(outcomes, expected):
    intervals = {"holds": (4.0, 5.0), "fails": (0.0, 1.0), "undecided": (1.0, 5.0)}
    checks = [_check(*intervals[o], decisive=d) for o, d in outcomes]
    assert stats.verdict_from_checks(checks) == expected
    assert stats.verdict_from_checks([c.to_dict() for c in checks]) == expected


def test_verdict_needs_a_decisive_check():
    with pytest.raises(ValueError, match="decisive"):
        stats.verdict_from_checks([_check(4, 5, decisive=False)])


def test_plateau_on_synthetic_curves():
    epochs = np.arange(20)
    levelled = 0.1 + 2.0 * np.exp(-epochs / 2.0)  # flat well before the last fifth
    still_falling = 2.0 - 0.09 * epochs  # linear: the last fifth carries ~a fifth of it
    assert stats.plateau(levelled) < 0.01 and stats.converged(levelled)
    assert stats.plateau(still_falling) == pytest.approx(4 / 19)
    assert not stats.converged(still_falling)
    # a spike mid-training, still falling back: most of the net decrease is recent
    assert stats.plateau([1.0, 0.5, 3.0, 0.9, 0.8, 0.79]) == pytest.approx(0.11 / 0.21)
    assert stats.plateau([1.0, 1.0, 1.0]) == 0.0  # never fell and not falling
    assert stats.plateau([1.0, 2.0, 1.5]) == 1.0  # never below its start, but falling
    assert stats.plateau([1.0, 0.5, 0.6]) < 0  # rising at the end counts as levelled off
    assert math.isnan(stats.plateau([1.0, math.nan, 0.5]))  # diverged
    assert math.isnan(stats.plateau([1.0]))


def _runs():
    falling = list(2.0 - 0.09 * np.arange(10))
    flat = list(0.1 + 2.0 * np.exp(-np.arange(10) / 1.5))
    return pandas.DataFrame({
        "norm": ["batch"] * 3 + ["none"] * 3,
        "status": ["ok"] * 6,
        "diverged": [False, False, True, False, False, False],
        "train/loss": [flat, flat, [2.0, math.nan], flat, falling, flat],
    })


def test_convergence_table_counts_per_arm():
    table = stats.convergence_table(_runs(), "norm").set_index("norm")
    assert table.loc["batch", ["runs", "diverged", "converged"]].tolist() == [3, 1, 2]
    assert table.loc["none", ["runs", "diverged", "converged"]].tolist() == [3, 0, 2]
    assert table.loc["none", "worst_plateau"] == pytest.approx(2 / 9)


def test_unconverged_arms_are_blockers_naming_the_arm():
    # by default an arm converges by its median run: 2 of 3 did
    assert stats.unconverged_arms(_runs(), "norm") == []
    assert stats.unconverged_arms(_runs(), "norm", share=1.0) == ["not converged: norm=none (2 of 3 runs)"]
    assert stats.unconverged_arms(_runs(), "norm", share=0.6) == []
    flat, falling = _runs()["train/loss"][0], _runs()["train/loss"][4]
    one_of_three = pandas.DataFrame({
        "norm": ["batch"] * 3, "status": ["ok"] * 3, "diverged": [False] * 3, "train/loss": [flat, falling, falling],
    })
    assert stats.unconverged_arms(one_of_three, "norm") == ["not converged: norm=batch (1 of 3 runs)"]


def test_ceiling_and_floor_blockers():
    assert "at the ceiling" in stats.ceiling_blocker(Estimate(99.4, 99.1, 99.7, 5), 99.2, 10.0, "BN vs LN")
    assert stats.ceiling_blocker(99.4, 97.0, 10.0, "BN vs LN") is None  # one arm leaves room
    assert "at the floor" in stats.ceiling_blocker(10.5, 9.8, 10.0, "BN vs LN")
    assert stats.ceiling_blocker(math.nan, 99.9, 10.0, "x") is None


def test_seeds_needed_halves_the_threshold():
    n = stats.seeds_needed(1.4, 3.0)
    from scipy import stats as scipy_stats

    def half(k):
        return scipy_stats.t.ppf(0.975, k - 1) * 1.4 / math.sqrt(k)

    assert half(n) <= 1.5 < half(n - 1)
    assert stats.seeds_needed(0.0, 3.0) == 2
    assert stats.seeds_needed(10.0, 1.0, cap=12) == 12


def test_more_seeds_needed_follows_the_plan():
    plan = SeedPlan(pilot=3, initial=6, block=4, cap=12, why="synthetic")
    wide = stats.make_analysis(
        claim="CX", title="t", rule="r", evidence=[], anchor="a", setup="s", seed_plan=plan,
        checks=[_check(1.0, 5.0), _check(4.0, 5.0)],
    )
    assert wide["verdict"] == "inconclusive"
    assert stats.more_seeds_needed(wide, plan, 6) == 4
    assert stats.more_seeds_needed(wide, plan, 10) == 2  # up to the cap
    assert stats.more_seeds_needed(wide, plan, 12) == 0
    blocked = stats.make_analysis(
        claim="CX", title="t", rule="r", evidence=[], anchor="a", setup="s",
        checks=[_check(1.0, 5.0, blockers=("at the ceiling: x",))],
    )
    assert blocked["verdict"] == "inconclusive" and stats.more_seeds_needed(blocked, plan, 6) == 0
    decided = stats.make_analysis(
        claim="CX", title="t", rule="r", evidence=[], anchor="a", setup="s", checks=[_check(0.0, 1.0)],
    )
    assert decided["verdict"] == "not supported" and stats.more_seeds_needed(decided, plan, 6) == 0


def test_seed_plan_validates():
    with pytest.raises(ValueError, match="cap"):
        SeedPlan(pilot=3, initial=8, block=2, cap=6, why="x")


def test_make_analysis_computes_the_verdict_and_headline():
    a = stats.make_analysis(
        claim="CX", title="t", rule="r", evidence=[], anchor="a", setup="s",
        checks=[_check(0.0, 1.0, decisive=False), _check(4.0, 5.0)],
        convergence=stats.convergence_table(_runs(), "norm"),
    )
    assert a["verdict"] == "partly supported"  # a secondary check fails
    assert a["headline"] == "at_least 4.0..5.0"  # the first decisive one
    assert a["convergence"][0]["norm"] == "batch"
    with pytest.raises(ValueError, match="headline"):
        stats.make_analysis(claim="CX", title="t", rule="r", evidence=[], anchor="a", setup="s",
                            checks=[_check(4.0, 5.0)], headline="nope")
    with pytest.raises(TypeError):  # claims never pass a verdict: the checks make it
        stats.make_analysis(claim="CX", title="t", rule="r", evidence=[], anchor="a", setup="s",
                            checks=[_check(4.0, 5.0)], verdict="supported")


def test_paired_differences_match_seeds():
    a = pandas.DataFrame({"seed": [0, 1, 2], "err": [5.0, 6.0, 7.0]})
    b = pandas.DataFrame({"seed": [2, 0, 1], "err": [6.0, 4.0, 5.0]})
    assert stats.paired_differences(a, b, "err").tolist() == [1.0, 1.0, 1.0]


def test_ceiling_summary_names_the_checks_the_ceiling_or_floor_blocked():
    free = stats.Check(name="a", effect=Estimate(5.0, 4.0, 6.0, 8), threshold=3.0, kind="at_least", why="x")
    capped = stats.Check(name="b", effect=Estimate(0.1, -0.2, 0.4, 8), threshold=3.0, kind="at_least", why="x",
                         blockers=(stats.ceiling_blocker(99.6, 99.5, 10.0, "b"),))
    assert stats.ceiling_summary([free]).endswith("none of the 1 checks was.")
    assert stats.ceiling_summary([free, capped]).endswith("1 of 2 were: b.")


def test_real_data_checks_give_a_verdict_of_their_own_never_blended():
    holds = stats.Estimate(5.0, 4.0, 6.0, 8)
    fails = stats.Estimate(0.0, -1.0, 1.0, 8)
    synthetic = stats.Check("synthetic effect", holds, 3.0, "at_least", "anchor")
    real_fails = stats.Check("real effect", fails, 3.0, "at_least", "anchor", real=True)
    analysis = stats.make_analysis(claim="C", title="t", rule="r", evidence=[], anchor="a", setup="s",
                                   checks=[synthetic, real_fails])
    assert analysis["verdict"] == "supported"
    assert analysis["real_verdict"] == "not supported" and analysis["real_agrees"] == "disagrees"
    alone = stats.make_analysis(claim="C", title="t", rule="r", evidence=[], anchor="a", setup="s", checks=[synthetic])
    assert alone["real_verdict"] is None and alone["real_agrees"] is None
    assert stats.agreement("supported", "supported") == "agrees"
    assert stats.agreement("inconclusive", "supported") == "cannot tell"


def test_the_convergence_rule_can_be_judged_on_every_run():
    arm = {"runs": 8, "diverged": 0, "converged": 5}
    assert not stats.arm_unconverged(arm)  # the median run converged
    with stats.converged_share(1.0):
        assert stats.arm_unconverged(arm)
    assert not stats.arm_unconverged(arm)


def test_alternatives_give_the_verdict_under_each_judgement_call():
    holds = stats.Check("effect", stats.Estimate(5.0, 4.0, 6.0, 8), 3.0, "at_least", "anchor")
    blocked = stats.Check("effect", stats.Estimate(5.0, 4.0, 6.0, 8), 3.0, "at_least", "anchor", blockers=("x",))
    analysis = stats.make_analysis(claim="C", title="t", rule="r", evidence=[], anchor="a", setup="s",
                                   checks=[holds], alternatives={"other choice": [blocked]})
    assert analysis["sensitivity"] == [{"alternative": "other choice", "verdict": "inconclusive"}]
