"""densreg.sklearn: scikit-learn's estimator checks, model selection, and the same numbers as the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import parametrize_with_checks

from densreg.app.cli import cli
from densreg.registry.testing import single_torch_thread  # noqa: F401
from densreg.sklearn import DensityEstimator, OutlierDetector

GAUSSIAN = {"model": "gaussian-mixture", "config": {"components": 1}}
TINY_RNADE = {"model": "rnade", "config": {"hidden": 4, "components": 2}, "epochs": 1}


@parametrize_with_checks([DensityEstimator(**GAUSSIAN), OutlierDetector(**GAUSSIAN), DensityEstimator(**TINY_RNADE)])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def rows(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2)) @ np.array([[3.0, 1.0], [0.0, 0.5]]) + [10.0, -2.0]


def test_score_samples_is_the_raw_rows_gaussian_log_density():
    X = rows()
    estimator = DensityEstimator(**GAUSSIAN, valid_fraction=0.0).fit(X)
    mean, cov = X.mean(0), np.cov(X.T, bias=True)
    diff = X - mean
    expected = -0.5 * (np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff) + np.log(np.linalg.det(cov))
                       + 2 * np.log(2 * np.pi))
    assert np.allclose(estimator.score_samples(X), expected, atol=1e-3)
    assert estimator.score(X) == pytest.approx(expected.mean(), abs=1e-3)


def test_numbers_equal_densreg_eval_score_and_sample(tmp_path):
    X = rows(120)
    estimator = DensityEstimator(**TINY_RNADE, random_state=3).fit(X)
    estimator.save(tmp_path / "m.safetensors")
    np.savetxt(tmp_path / "x.csv", X, delimiter=",", header="c1,c2", comments="")
    result = CliRunner().invoke(cli, ["eval", str(tmp_path / "m.safetensors"), "--table", str(tmp_path / "x.csv"),
                                      "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["nll_nats"] == pytest.approx(-estimator.score(X), abs=1e-5)
    result = CliRunner().invoke(cli, ["sample", str(tmp_path / "m.safetensors"), "-n", "7", "--seed", "5", "--out",
                                      str(tmp_path / "g.png"), "--csv", str(tmp_path / "s.csv")])
    assert result.exit_code == 0, result.output
    drawn = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    assert np.allclose(estimator.sample(7, random_state=5), drawn, atol=1e-5)


def test_outlier_detector_flags_the_contamination_share_and_far_rows():
    X = rows(400)
    detector = OutlierDetector(**GAUSSIAN, contamination=0.05).fit(X)
    assert (detector.predict(X) == -1).mean() == pytest.approx(0.05, abs=0.01)
    assert detector.predict([[10.0, -2.0], [40.0, 20.0]]).tolist() == [1, -1]
    assert np.allclose(detector.decision_function(X), detector.score_samples(X) - detector.offset_)
    with pytest.raises(ValueError, match="contamination"):
        OutlierDetector(**GAUSSIAN, contamination=0.7).fit(X)


def test_grid_search_picks_components_by_held_out_log_likelihood_in_a_pipeline():
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(-4, 0.5, size=(150, 2)), rng.normal(4, 0.5, size=(150, 2))])
    pipeline = make_pipeline(FunctionTransformer(), DensityEstimator("gaussian-mixture"))
    search = GridSearchCV(pipeline, {"densityestimator__config": [{"components": 1}, {"components": 2}]}, cv=3)
    search.fit(X)
    assert search.best_params_["densityestimator__config"] == {"components": 2}
    copy = clone(search.best_estimator_)
    assert copy.get_params()["densityestimator__config"] == {"components": 2}
    assert not hasattr(copy[-1], "model_")
