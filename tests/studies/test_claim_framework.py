"""The claims framework: a claim is one module, found by its file name; its declaration
and findings become the report's section, page and summary row."""

import json
import sys
import textwrap

import pytest

from studies import claims
from studies.engine.config import RunConfig
from studies.engine.store import ResultsStore
from studies.report import render

NEW_CLAIM = textwrap.dedent(
    '''
    """C99 - a claim added as one module and nothing else."""

    from studies.claims import Claim, check_profile
    from studies.engine.config import RunConfig, grid as product
    from studies.report import stats

    CLAIM_ID = "C99"


    def grid(profile):
        check_profile(profile)
        return product(RunConfig(claim=CLAIM_ID, num_samples=200, widths=(8,)), seed=[0, 1, 2])


    def analyze(ok, runs):
        accuracy = stats.estimate(100 * ok["final/test/accuracy"])
        check = stats.Check("test accuracy above chance", accuracy, 10.0, "at_least", "10 classes", unit=" %")
        return dict(checks=[check], evidence=[("test accuracy", accuracy, " %")],
                    setup="A tiny MLP on MNIST-1D.", caveats=["Synthetic rows."])


    def figures(analysis, out_dir):
        return []


    CLAIM = Claim(id=CLAIM_ID, title="A new claim is one module", rule="Accuracy beats chance.",
                  anchor="Chance is 10 %.", seed_plan=None, grid=grid, analyze=analyze, figures=figures)
    '''
)


@pytest.fixture
def new_claim(tmp_path, monkeypatch):
    folder = tmp_path / "more_claims"
    folder.mkdir()
    (folder / "c99_new_claim.py").write_text(NEW_CLAIM)
    monkeypatch.setattr(claims, "__path__", [*claims.__path__, str(folder)])
    modules = claims.discover()
    monkeypatch.setattr(claims, "MODULES", modules)
    monkeypatch.setattr(claims, "CLAIM_IDS", tuple(modules))
    yield "C99"
    sys.modules.pop("studies.claims.c99_new_claim", None)


def test_discovery_orders_claims_by_number_then_suffix():
    assert claims.CLAIM_IDS[:5] == ("C1", "C2", "C3", "C4", "C4b")
    assert list(claims.MODULES.values())[4] == "studies.claims.c4b_small_batch"


def test_a_claim_defined_in_one_new_module_appears_in_the_report(new_claim, tmp_path):
    assert claims.CLAIM_IDS[-1] == new_claim
    assert claims.parse_claims("c99") == ["C99"]
    store = ResultsStore(tmp_path / "results")
    for config in claims.plan(["C99"], "smoke")["C99"]:
        store.write({**config.to_dict(), "key": config.key(), "status": "ok", "error": None,
                     "final/test/accuracy": 0.5 + 0.01 * config.seed, "diverged": False})
    report = render.write_report(tmp_path / "results", tmp_path / "out").read_text()
    assert "A new claim is one module" in report
    page = (tmp_path / "out" / "claims" / "c99.md").read_text()
    assert "Accuracy beats chance." in page and "supported" in page
    summary = json.loads(json.dumps(claims.analyze("C99", _rows(store))))
    assert summary["verdict"] == "supported" and summary["seed_plan"] is None


def test_a_module_must_declare_its_claim(tmp_path, monkeypatch):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "c98_undeclared.py").write_text("CLAIM = None\n")
    monkeypatch.setattr(claims, "__path__", [*claims.__path__, str(folder)])
    monkeypatch.setattr(claims, "MODULES", claims.discover())
    with pytest.raises(ValueError, match="must declare CLAIM = Claim"):
        claims.load("C98")
    sys.modules.pop("studies.claims.c98_undeclared", None)


def test_a_reference_arm_is_read_from_the_claim_that_trains_it(monkeypatch):
    import dataclasses

    import pandas

    seen = {}
    c4b = claims.load("C4b")

    def analyze(ok, runs):
        seen["claims"] = sorted(set(ok["claim"]))
        return claims.no_runs(runs)

    monkeypatch.setattr(c4b, "CLAIM", dataclasses.replace(c4b.CLAIM, analyze=analyze, reads=("C4",)))
    rows = pandas.DataFrame({"claim": ["C4", "C4b", "C7"], "status": ["ok"] * 3})
    claims.analyze("C4b", rows)
    assert seen["claims"] == ["C4", "C4b"]


def _rows(store):
    from studies.engine.store import load_rows

    return load_rows(store.root)


def test_grid_configs_name_their_claim():
    with pytest.raises(ValueError, match="unknown profile"):
        claims.plan(["C1"], "huge")
    assert all(isinstance(c, RunConfig) for c in claims.plan(["C7"], "smoke")["C7"])


@pytest.mark.parametrize("profile", claims.PROFILES)
def test_every_claim_plans_its_own_runs_at_every_profile(profile):
    planned = claims.plan(claims.CLAIM_IDS, profile)
    assert set(planned) == set(claims.CLAIM_IDS)
    for claim_id, configs in planned.items():
        assert configs and {c.claim for c in configs} == {claim_id}


def test_every_analysis_carries_the_convergence_alternative(new_claim, tmp_path):
    import pandas

    rows = pandas.DataFrame({"claim": ["C99"] * 3, "status": ["ok"] * 3, "final/test/accuracy": [0.5, 0.6, 0.55]})
    analysis = claims.analyze("C99", rows)
    assert analysis["sensitivity"] == [{"alternative": claims.ALL_RUNS_CONVERGED, "verdict": "supported"}]
