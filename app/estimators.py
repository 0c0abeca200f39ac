"""scikit-learn estimators over densreg's real-valued models (``densreg.sklearn``).

``DensityEstimator`` is a density estimator as ``KernelDensity`` and ``GaussianMixture`` are:
``fit(X)``, ``score_samples(X)`` (log density of each row in nats, in X's own units), ``score(X)``
(their mean: model selection by held-out log-likelihood in ``GridSearchCV``), ``sample``.
``OutlierDetector`` adds scikit-learn's outlier-detector face (``IsolationForest``):
``decision_function`` (score_samples minus ``offset_``, negative for outliers), ``predict`` (+1 inlier,
-1 outlier: the ``contamination`` share of the training rows falls below ``offset_``).

Each fits a registered model of real values (``densreg models``: rnade, gaussian-mixture, ...) to
rows standardized by the training rows' mean and std (registry/transforms.py), holding out
``valid_fraction`` of them (seeded) for early stopping of gradient-trained models; ``save(path)``
writes a checkpoint that the CLI (``densreg eval/score/sample ... --table``) and exports use with the
same transform, so their numbers equal the estimator's.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin, OutlierMixin
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

from densreg.registry import ConfigError, api, save_checkpoint
from densreg.registry.transforms import Transform

from .own_data import split_indices
from .training import fit as fit_model


class DensityEstimator(DensityMixin, BaseEstimator):
    """A densreg model of real values as a scikit-learn density estimator.

    ``model``: a registered real-valued model; ``config``: its constructor arguments (dict, as
    ``--set``); ``epochs``, ``batch_size``, ``lr``, ``patience``: training options of gradient-trained
    models (closed-form ones, such as gaussian-mixture, ignore them); ``valid_fraction``: rows held out
    for early stopping (0: none); ``random_state``: an int seeding the weights, shuffling and split.
    Fitted: ``model_`` (the torch model), ``transform_`` (the Transform), ``n_features_in_``,
    ``metrics_`` (training metrics, NLL of standardized rows).
    """

    def __init__(self, model: str = "rnade", config: dict | None = None, epochs: int = 20, batch_size: int = 100,
                 lr: float = 5e-3, patience: int = 5, valid_fraction: float = 0.1, random_state: int = 0):
        self.model = model
        self.config = config
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.patience = patience
        self.valid_fraction = valid_fraction
        self.random_state = random_state

    def fit(self, X, y=None):
        """Fit on rows X (n_samples, n_features) of finite real values; ``y`` is ignored."""
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        seed = int(self.random_state or 0)
        train_at, valid_at = split_indices(len(X), self.valid_fraction, seed)
        columns = [str(c) for c in getattr(self, "feature_names_in_", [f"c{i + 1}" for i in range(X.shape[1])])]
        transform = Transform.fit_table(X[train_at], columns, "scikit-learn")
        torch.manual_seed(seed)
        model = api.create_model(self.model, transform.event_shape, 0, **(self.config or {}))
        if model.family.discrete:
            raise ConfigError(f"{self.model!r} models values 0..K-1; DensityEstimator takes a model of real values "
                              "(densreg models: rnade, gaussian-mixture, ...)")
        options = {} if model.closed_form else {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                                                "patience": self.patience, "seed": seed, "device": "cpu"}
        valid = torch.from_numpy(transform.standardize(X[valid_at])) if len(valid_at) else None
        self.metrics_ = fit_model(model, torch.from_numpy(transform.standardize(X[train_at])), valid,
                                  name=api.model_spec(self.model).qualified_name, **options)
        self.model_, self.transform_ = model.eval(), transform
        return self

    def score_samples(self, X) -> np.ndarray:
        """log p(x) of each row in nats, float64 (n_samples,): the model's log density of the standardized
        row plus log |d standardized / d x| (``Transform.log_jacobian``)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        values = torch.from_numpy(self.transform_.standardize(X))
        with torch.no_grad():
            parts = [self.model_.log_prob(values[i:i + 1000]).double().numpy() for i in range(0, len(values), 1000)]
        return np.concatenate(parts) + self.transform_.log_jacobian

    def score(self, X, y=None) -> float:
        """Mean log density of the rows of X in nats (higher is better)."""
        return float(np.mean(self.score_samples(X)))

    def sample(self, n_samples: int = 1, random_state=None) -> np.ndarray:
        """``n_samples`` exact draws, float64 (n_samples, n_features) in X's units; the uniform noise comes
        from numpy: default_rng(random_state) for None or an int, as `densreg sample --seed` draws it (the
        same rows for the same seed), or a RandomState's random_sample."""
        check_is_fitted(self)
        shape = self.model_.noise_shape(int(n_samples))
        if random_state is None or isinstance(random_state, (int, np.integer)):  # as `densreg sample --seed`
            noise = np.random.default_rng(random_state).random(shape)
        else:
            noise = check_random_state(random_state).random_sample(shape)
        with torch.no_grad():
            values = self.model_.sample(int(n_samples), noise=torch.from_numpy(noise)).double().numpy()
        return self.transform_.unstandardize(values)

    def save(self, path) -> None:
        """Write the fitted model as a densreg checkpoint recording its transform (``densreg eval PATH
        --table FILE`` gives the same numbers)."""
        check_is_fitted(self)
        save_checkpoint(path, self.model_, api.model_spec(self.model).qualified_name, metrics=self.metrics_,
                        transform=self.transform_.to_dict())

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        tags.input_tags.allow_nan = False
        return tags


class OutlierDetector(OutlierMixin, DensityEstimator):
    """``DensityEstimator`` as an outlier detector: ``decision_function`` = score_samples - ``offset_``,
    ``predict`` +1 (inlier) / -1 (outlier), ``offset_`` the ``contamination`` quantile of the training
    rows' log densities (in (0, 0.5])."""

    def __init__(self, model: str = "rnade", config: dict | None = None, epochs: int = 20, batch_size: int = 100,
                 lr: float = 5e-3, patience: int = 5, valid_fraction: float = 0.1, random_state: int = 0,
                 contamination: float = 0.1):
        super().__init__(model, config, epochs, batch_size, lr, patience, valid_fraction, random_state)
        self.contamination = contamination

    def fit(self, X, y=None):
        if not 0 < self.contamination <= 0.5:
            raise ValueError(f"contamination must lie in (0, 0.5], got {self.contamination!r}")
        super().fit(X)
        self.offset_ = float(np.quantile(self.score_samples(X), self.contamination))
        return self

    def decision_function(self, X) -> np.ndarray:
        """score_samples(X) - offset_: negative for outliers."""
        return self.score_samples(X) - self.offset_

    def predict(self, X) -> np.ndarray:
        """+1 for inliers, -1 for outliers (decision_function below 0)."""
        return np.where(self.decision_function(X) >= 0, 1, -1)
