"""scikit-learn estimators of densreg's real-valued models (imports torch and scikit-learn).

>>> from densreg.sklearn import DensityEstimator, OutlierDetector
>>> import numpy as np
>>> X = np.random.default_rng(0).normal(size=(200, 2))
>>> gm = DensityEstimator("gaussian-mixture", config={"components": 1}).fit(X)
>>> round(gm.score(X), 1)      # mean log density in nats (a standard normal in 2-D: about -2.84)
-2.8
>>> OutlierDetector("gaussian-mixture", config={"components": 1}, contamination=0.05).fit(X).predict(
...     [[0.0, 0.0], [6.0, 6.0]]).tolist()
[1, -1]

Both are scikit-learn estimators (get_params/set_params, clone, Pipeline, GridSearchCV); see
densreg.app.estimators and docs/guide/own-data.md.
"""

from densreg.app.estimators import DensityEstimator, OutlierDetector

__all__ = ["DensityEstimator", "OutlierDetector"]
