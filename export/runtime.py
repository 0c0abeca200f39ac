"""Run an exported model with onnxruntime and numpy only (never imports torch).

    from densreg.export.runtime import ExportedModel
    model = ExportedModel("mnist-nade/")        # provider: CUDA if it loads, else CPU
    nll = -model.log_prob(images)               # nats, (N,)
    samples = model.sample(64, seed=0)          # int64 (64, C, H, W)
    codes = model.features(images)              # float32 (N, F), when the model has features

Opening a folder first checks its manifest (format, sha256 of every file) and the external
data every graph names (only files of the folder), so a mixed, modified or hostile folder
is refused with one RuntimeLoadError line before onnxruntime reads it; then that every graph
names this manifest (``manifest_sha256``, format 3) and that conditionals.onnx reproduces the
golden log-probabilities (a few images: about a millisecond for MNIST models), so weights edited
together with a forged manifest are refused too. Formats read: ``format.READABLE``.

Sampling is a Python loop around ``step.onnx``: D calls, each costing what the
model's own cached ``step`` costs. Given the same uniform noise (n, D) it draws the
same values as torch's ``DensityModel.sample(noise=...)`` (inverse CDF in float64);
``sample(..., engine="graph")`` runs the whole loop inside ``sample.onnx`` instead.
On CUDA (or with ``io_binding=True``) the state tensors stay on the device between
steps as OrtValues bound through IOBinding, the draw runs in ``draw.onnx`` on the
device, and only the drawn values (n int64 per step) are copied to the host.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from densreg.registry import returns
from densreg.registry.atomic import is_utf8_path
from densreg.registry.errors import ConfigError, DataError, RuntimeLoadError
from densreg.registry.limits import check_event_shape
from densreg.registry.families import Family
from densreg.registry.saved import VALUE_KINDS, SavedModelInfo
from densreg.registry.transforms import transform_of
from densreg.registry.version import __version__

from . import format as fmt
from . import legacy
from . import manifest as manifest_file
from .sessions import (CPU, CUDA, DEFAULT_SAMPLING_THREADS, DEFAULT_SCORING_THREADS, PROVIDER_CHOICES, check_inputs,
                       open_session, resolve_providers, resolve_threads, runtime_info, session_options, usable_providers)

ENGINES = ("steps", "graph")


def step_loop(session: ort.InferenceSession, family: Family, state_specs: list[dict], initial: list[np.ndarray],
              noise: np.ndarray, model=None) -> np.ndarray:
    """Ancestral sampling by D calls of a step.onnx session, numpy state on the host, the family's draw in
    numpy float64: noise of ``family.noise_shape(n, D)`` -> values (n, D) in generation order, int64 levels
    or float64 real values (each fed back to the next step in the family's ``numpy_dtype``). With ``model``
    every step's parameters are checked (``returns.params``: no NaN, no +inf) and errors name it."""
    n, d_total = noise.shape[:2]
    inputs = {i.name for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    names, n_params = [s["name"] for s in state_specs], len(family.param_names)
    feed = {name: a for name, a in zip(names, tile_initial(state_specs, initial, n)) if name in inputs}
    has_value, has_position = "value" in inputs, "position" in inputs
    position = position_input(session)
    value = np.zeros(n, dtype=family.numpy_dtype)
    values = np.empty((n, d_total), dtype=np.int64 if family.discrete else np.float64)
    for d in range(d_total):
        if has_value:
            feed["value"] = value
        if has_position:
            feed["position"] = position(d, n)
        out = session.run(outputs, feed)
        for name, array in zip(names, out[n_params:]):
            if name in feed:
                feed[name] = array
        if model is not None:
            returns.params(model, "step", tuple(out[:n_params]), family, (n,))
        values[:, d] = family.draw_numpy(tuple(out[:n_params]), family.noise_column(noise, d))
        value = values[:, d].astype(family.numpy_dtype)
    return values


def position_input(session: ort.InferenceSession):
    """(d, n) -> what ``session`` (a step.onnx) takes as ``position`` for ``n`` rows at step d: int64 (n,)
    filled with d (a position per row: exports of densreg after 0.3.0), or an int64 scalar (densreg 0.3.0)."""
    shapes = [getattr(i, "shape", ()) for i in session.get_inputs() if i.name == "position"]
    if shapes and len(shapes[0]) == 1:
        return lambda d, n: np.full(n, d, dtype=np.int64)
    return lambda d, n: np.array(d, dtype=np.int64)


def tile_initial(state_specs: list[dict], initial: list[np.ndarray], n: int) -> list[np.ndarray]:
    """Each state's stored one-row initial value repeated to ``n`` rows along its batch axis."""
    out = []
    for spec, a in zip(state_specs, initial):
        axis = spec.get("batch_axis", 0)
        shape = a.shape if axis is None else (*a.shape[:axis], n, *a.shape[axis + 1:])
        out.append(np.ascontiguousarray(np.broadcast_to(a, shape)))
    return out


class ExportedModel:
    """An export folder opened in onnxruntime: density and sampling, numpy in and out.

    ``provider``: the execution provider in use (e.g. "CPUExecutionProvider");
    ``info``: a SavedModelInfo; ``manifest``: the folder's manifest.json (dict);
    ``event_shape``, ``num_categories``, ``num_positions``, ``order`` (D,) int64 as the
    torch model's. ``threads``: intra-op threads (default $OMP_NUM_THREADS, else one for the
    sampling graphs and two for whole-image scoring). ``io_binding`` (default: on for CUDA)
    keeps the sampling state on the device; it works on CPU too.
    """

    def __init__(self, path, provider: str = "auto", threads: int | None = None,
                 io_binding: bool | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise RuntimeLoadError(f"no such export folder: {self.path}")
        if not is_utf8_path(self.path.absolute()):
            raise RuntimeLoadError(f"cannot open export {os.fsencode(self.path)!r}: the path is not valid UTF-8, "
                                   "and onnxruntime opens files by UTF-8 path; rename the folder")
        self.manifest = manifest = manifest_file.read_verified(self.path)
        self.legacy = manifest["format"] == legacy.FORMAT  # format 1: no digests, sample.onnx, pixel_log_prob
        try:
            self.info = self._parse_info(manifest)
            self.transform = transform_of(self.info)  # the user's data's preprocessing, or None
            self.order = np.asarray(manifest["order"], dtype=np.int64)
            self.state_specs = list(manifest["state"])
            self._initial = [fmt.decode_array(s["initial"]) for s in self.state_specs]
        except KeyError as exc:
            raise RuntimeLoadError(f"{self.path / fmt.MANIFEST} lacks the key {exc.args[0]!r}; expected the "
                                   "manifest densreg export writes (its keys are described in the folder's "
                                   "README.md)") from exc
        except (ValueError, TypeError, OverflowError) as exc:
            raise RuntimeLoadError(f"{self.path / fmt.MANIFEST}: invalid: {exc}") from exc
        self._check_version()
        providers = resolve_providers(provider)
        external = {fmt.WEIGHTS} & set(manifest["files"])
        scoring, sampling = session_options(threads, DEFAULT_SCORING_THREADS), session_options(threads)
        self.conditionals = open_session(self.path / fmt.CONDITIONALS, providers, scoring, external)
        self.step_session = open_session(self.path / fmt.STEP, providers, sampling, external)
        self.family = fmt.family_of(manifest)
        self.value_kind = self.family.value_kind
        # real values: draw and sample after densreg 0.3.0; format 1 (categorical only) has draw.onnx
        graphs = fmt.required_graphs(self.family, None if self.legacy else manifest)
        self.draw_session = open_session(self.path / fmt.DRAW, providers, sampling, external) \
            if fmt.DRAW in graphs else None  # else the numpy draw, on the host
        self._sample_session = None  # sample.onnx opens on first use (engine="graph")
        self._features_session = None  # features.onnx too
        self._scoring_options = scoring
        self._providers, self._sampling_options, self._external = providers, sampling, external
        self._check_export_ids(*[s for s in (self.conditionals, self.step_session, self.draw_session) if s])
        self.provider = self.step_session.get_providers()[0]
        self.device = "cuda" if self.provider == CUDA else "cpu"
        self.io_binding = self.device == "cuda" if io_binding is None else bool(io_binding)
        self.io_binding = self.io_binding and self.draw_session is not None and self.family.discrete
        self.name = self.info.model
        self.event_shape = self.info.event_shape
        self.num_categories = self.info.num_categories
        self.num_positions = int(np.prod(self.event_shape))
        check_inputs(self.conditionals, self.path / fmt.CONDITIONALS, {"images"})
        states = {spec["name"] for spec in self.state_specs}
        check_inputs(self.step_session, self.path / fmt.STEP, {"value", "position", *states})
        self._step_inputs = {i.name for i in self.step_session.get_inputs()}
        self._step_outputs = [o.name for o in self.step_session.get_outputs()]
        if self.order.shape != (self.num_positions,) or not np.array_equal(np.sort(self.order),
                                                                           np.arange(self.num_positions)):
            raise RuntimeLoadError(f"{self.path}: manifest 'order' is not a permutation of the {self.num_positions} "
                                   "positions")
        self._position = position_input(self.step_session)
        self._check_golden()  # last: the graphs are known to take what the folder's role says

    @staticmethod
    def _parse_info(manifest: dict) -> SavedModelInfo:
        model = manifest["model"]
        kind = manifest.get("value_kind", "categorical")
        if kind not in VALUE_KINDS:
            raise ValueError(f"value_kind {str(kind)[:40]!r} is not one of {', '.join(VALUE_KINDS)}")
        event_shape, num_categories = check_event_shape(manifest["event_shape"], manifest["num_categories"],
                                                        continuous=kind == "continuous")
        return SavedModelInfo(model=model["name"], config=dict(model["config"]),
                              event_shape=event_shape, num_categories=num_categories, ordering=str(manifest["ordering"]),
                              densreg_version=str(model.get("densreg_version", "")), plugin=str(model["plugin"]),
                              distribution=str(model["distribution"]), distribution_version=str(model["version"]),
                              opset=int(manifest["versions"]["opset"]), parity=manifest.get("parity"),
                              value_kind=kind, transform=manifest.get("transform"))

    def _check_version(self) -> None:
        theirs, ours = self.info.densreg_version or "?", __version__
        if fmt.major(theirs) != fmt.major(ours):
            raise RuntimeLoadError(f"{self.path} was exported by densreg {theirs}, another major version than this "
                                   f"densreg {ours}; re-export it with this version")

    def _check_export_ids(self, *sessions) -> None:
        if self.legacy:
            return
        for session in sessions:
            meta = dict(session.get_modelmeta().custom_metadata_map)
            if meta.get("format") != self.manifest["format"] or meta.get("export_id") != self.manifest.get("export_id"):
                raise RuntimeLoadError(f"{self.path}: a graph's export id {meta.get('export_id')!r} is not the "
                                       f"manifest's {self.manifest.get('export_id')!r}: the folder mixes exports")
            manifest_file.check_binding(self.path, self.manifest, f"{meta.get('graph', 'a graph')}.onnx", meta)

    def _check_golden(self) -> None:
        """The weights are those the export was checked with (``manifest.check_golden``; not format 1)."""
        if not self.legacy:
            manifest_file.check_golden(self.path, self.manifest, self.conditionals, self.family.numpy_dtype, self.name)

    @property
    def sample_session(self) -> ort.InferenceSession:
        """sample.onnx (opened on first use)."""
        if self._sample_session is None:
            if self.legacy:
                raise RuntimeLoadError(f"{self.path} is a format-1 export without {fmt.SAMPLE}; re-export it for "
                                       "engine='graph'")
            session = open_session(self.path / fmt.SAMPLE, self._providers, self._sampling_options, self._external)
            self._check_export_ids(session)
            self._sample_session = session
        return self._sample_session

    @property
    def has_features(self) -> bool:
        """Whether the folder holds features.onnx (the model defines ``features`` and they exported)."""
        return fmt.FEATURES in (self.manifest.get("files") or {})

    @property
    def features_meaning(self) -> str | None:
        """What each feature is (the model's own description, from the manifest); None without features."""
        return (self.manifest.get("features") or {}).get("meaning") if self.has_features else None

    def require_features(self) -> None:
        """ConfigError (one line, saying why) unless the folder holds features.onnx."""
        if not self.has_features:
            reason = (self.manifest.get("features") or {}).get("reason")
            raise ConfigError(f"the export {self.path} has no features graph ({fmt.FEATURES}): "
                              + (reason if reason else "it was written before densreg exported features; "
                                 "re-export the checkpoint"))

    def features(self, x, batch_size: int = 500) -> np.ndarray:
        """The model's learned features of images (N, C, H, W) -> float32 (N, F), in batches.

        ConfigError (one line) when the export has no features graph: the model defines no
        ``features`` (e.g. the counting baselines), or the folder predates features export.
        """
        self.require_features()
        if self._features_session is None:
            session = open_session(self.path / fmt.FEATURES, self._providers, self._scoring_options, self._external)
            self._check_export_ids(session)
            self._features_session = session
        x = self.validate(x)
        parts = [self._features_session.run(["features"], {"images": x[i:i + batch_size]})[0]
                 for i in range(0, len(x), batch_size)]
        if not parts:
            return np.zeros((0, int(self.manifest["features"]["size"])), dtype=np.float32)
        out = np.concatenate(parts)
        returns.features(self, out, len(x))
        return out

    def __repr__(self) -> str:
        return f"ExportedModel({str(self.path)!r}, model={self.name!r}, provider={self.provider!r})"

    # -- density ----------------------------------------------------------------
    def prepare(self, raw) -> np.ndarray:
        """Raw data through the recorded transform (registry/transforms.py), as the checkpoint applies it:
        8-bit pictures uint8 (N, C, H, W) -> levels, or table rows (N, D) -> standardized (N, 1, 1, D).
        ConfigError for a model trained on a registered dataset (it records no transform)."""
        if self.transform is None:
            raise ConfigError(f"{self.path} was trained on a registered dataset and records no transform; pass "
                              "its values as they are")
        if self.transform.kind == "table":
            return self.transform.standardize(raw)
        return self.transform.levels(raw)

    def validate(self, x) -> np.ndarray:
        """Images (B, C, H, W) with integer values 0..K-1 -> int64 (real values: finite float32); DataError
        otherwise."""
        return self.family.graph_input(x, self.event_shape)

    def _run_conditionals(self, x, outputs):
        """The conditionals graph's ``outputs`` for values ``x``, each checked by ``returns`` (one line naming the
        export when a result is NaN or +inf, of the wrong shape, or above log p = 0 for discrete values)."""
        x = self.validate(x)
        out = self.conditionals.run(outputs, {"images": x})
        returns.graph_outputs(self, dict(zip(outputs, out)), len(x))
        return out

    def conditional_logits(self, x) -> np.ndarray:
        """Logits of every conditional, float32 (B, D, K) in generation order."""
        if self.family.param_names != ("logits",):
            raise DataError(f"{self.name}'s conditionals are a {self.family.describe()}, not logits: use "
                            "conditional_params")
        return self._run_conditionals(x, ["logits"])[0]

    def conditional_params(self, x):
        """The family's parameters of every conditional, each float32 (B, D, P) in generation order (as the
        family packs them: the logits alone for ``Categorical``; (log weights, means, log_scales) for a
        Gaussian mixture)."""
        return self.family.pack(tuple(self._run_conditionals(x, list(self.family.param_names))))

    def log_prob(self, x) -> np.ndarray:
        """Exact log-likelihood in nats, float32 (B,)."""
        return self._run_conditionals(x, ["log_prob"])[0]

    def pixel_log_probs(self, x) -> np.ndarray:
        """log p(x_i | values before it) in nats, float32 (B, C, H, W) in image layout."""
        if self.legacy:  # format 1 has no pixel_log_prob output
            x = self.validate(x)
            return legacy.pixel_log_probs(self.conditional_logits(x), x, self.order)
        return self._run_conditionals(x, ["pixel_log_prob"])[0]

    def nll(self, x, batch_size: int = 500) -> np.ndarray:
        """-log p(x) in nats per image, float64 (N,), in batches of ``batch_size``."""
        x = np.asarray(x)
        parts = [-self.log_prob(x[i:i + batch_size]).astype(np.float64) for i in range(0, len(x), batch_size)]
        return np.concatenate(parts) if parts else np.zeros(0)

    # -- sampling -----------------------------------------------------------------
    def initial_state(self, n: int) -> list[np.ndarray]:
        """The state before position 0 for ``n`` rows (numpy, one array per state tensor)."""
        return tile_initial(self.state_specs, self._initial, n)

    def _check_step(self, value, position, state) -> np.ndarray:
        value = np.asarray(value)
        if value.ndim != 1 or value.dtype.kind not in ("iu" if self.family.discrete else "iuf"):
            kind = "integer" if self.family.discrete else "real"
            raise DataError(f"step value must be a 1-D {kind} array (B,), got {value.dtype} of shape {value.shape}")
        try:
            value = self.family.graph_input(value.reshape(-1, 1, 1, 1), (1, 1, 1)).reshape(-1)
        except DataError as exc:
            raise DataError(f"step value: {exc}") from None
        if not isinstance(position, (int, np.integer)) or not 0 <= position < self.num_positions:
            raise DataError(f"step position must be an integer 0..{self.num_positions - 1}, got {position!r}")
        if len(state) != len(self.state_specs):
            raise DataError(f"step takes {len(self.state_specs)} state arrays, got {len(state)}")
        for spec, a in zip(self.state_specs, state):
            a = np.asarray(a)
            expected = [len(value) if n == "batch" else n for n in spec["shape"]]
            if list(a.shape) != expected or a.dtype != np.dtype(spec["dtype"]):
                raise DataError(f"step state {spec['name']} must be {spec['dtype']} of shape {tuple(expected)}, "
                                f"got {a.dtype} of shape {a.shape}")
        return value.astype(self.family.numpy_dtype, copy=False)

    def step(self, value: np.ndarray, position: int, state: list[np.ndarray]):
        """One ``step.onnx`` call: value (B,) int64 (x at order[position-1], zeros at 0), position
        0..D-1 -> logits (B, K) of the value at order[position], new state. DataError on bad input.
        A model of real values takes a float value and returns (log weights, means, log_scales), each
        (B, M), in place of the logits."""
        value = self._check_step(value, position, state)
        feed = {"value": value, "position": self._position(position, len(value)),
                **{s["name"]: a for s, a in zip(self.state_specs, state)}}
        out = self.step_session.run(None, {k: v for k, v in feed.items() if k in self._step_inputs})
        count = len(self.family.param_names)
        returns.params(self, "step", tuple(out[:count]), self.family, (len(value),))
        return self.family.pack(tuple(out[:count])), out[count:]

    def noise_shape(self, n: int) -> tuple[int, ...]:
        """The family's noise for ``n`` samples: (n, D), or (n, D, w) where a draw takes w > 1 uniforms."""
        return self.family.noise_shape(n, self.num_positions)

    def _noise(self, n: int, seed, noise) -> np.ndarray:
        if noise is None:
            return np.random.default_rng(seed).random(self.noise_shape(n))
        noise = np.asarray(noise, dtype=np.float64)
        if noise.shape != self.noise_shape(n):
            raise DataError(f"noise must have shape {self.noise_shape(n)}, got {noise.shape}")
        return noise

    def sample(self, n: int, seed: int | None = None, noise=None, engine: str = "steps") -> np.ndarray:
        """Exact ancestral samples (n, C, H, W): int64 levels, or float32 real values.

        ``noise`` of ``noise_shape(n)`` ((n, D): one uniform in [0, 1) per value for a categorical model)
        fixes the draw; otherwise it is ``numpy.random.default_rng(seed).random(noise_shape(n))`` (pass
        the same array to torch's ``model.sample(noise=torch.from_numpy(noise))`` for the same images).
        ``engine``: "steps" (a Python loop over step.onnx; IOBinding on CUDA) or "graph" (one call of
        sample.onnx, for families with an ONNX draw); both draw the same images.
        """
        n = int(n)
        if n < 1:
            raise DataError(f"number of samples must be at least 1, got {n}")
        if engine not in ENGINES:
            raise DataError(f"unknown sampling engine {engine!r}; expected one of {', '.join(ENGINES)}")
        noise = self._noise(n, seed, noise)
        if engine == "graph" and self.draw_session is None:
            raise DataError(f"{self.name}'s export has no {fmt.SAMPLE} (its {self.family.name} family has no ONNX "
                            "draw, or densreg 0.3.0 wrote it); use engine='steps'")
        if engine == "graph":
            images = self.sample_session.run(["images"], {"noise": noise})[0]
        else:
            values = self._sample_bound(noise) if self.io_binding else self._sample_host(noise)
            flat = np.empty_like(values)
            flat[:, self.order] = values
            images = flat.reshape(n, *self.event_shape).astype(self.family.numpy_dtype, copy=False)
        returns.samples(self, images, n, self.event_shape, self.family)
        return images

    def _sample_host(self, noise: np.ndarray) -> np.ndarray:
        """Step loop with numpy state on the host (fastest on CPU); the draw in numpy float64."""
        return step_loop(self.step_session, self.family, self.state_specs, self._initial, noise, model=self)

    def _sample_bound(self, noise: np.ndarray) -> np.ndarray:
        """Step loop through IOBinding: state, the family's parameters and the drawn value stay on ``self.device``.

        Per step only the noise column goes to the device and the drawn values (n int64)
        come back; the state outputs of one step are bound as the inputs of the next.
        """
        n, device = len(noise), self.device
        ortvalue = ort.OrtValue.ortvalue_from_numpy
        state = {s["name"]: ortvalue(a, device, 0) for s, a in zip(self.state_specs, self.initial_state(n))}
        # two value buffers used in turn: the draw writes one while the step reads the other
        buffers = [ortvalue(np.zeros(n, dtype=np.int64), device, 0) for _ in range(2)]
        noise_columns = np.ascontiguousarray(noise.T)
        step, draw = self.step_session.io_binding(), self.draw_session.io_binding()
        for name in self.family.param_names:  # the step's parameters (logits, or a mixture's) stay on the device
            params = ort.OrtValue.ortvalue_from_shape_and_type([n, self.family.param_size], np.float32, device, 0)
            step.bind_ortvalue_output(name, params)
            draw.bind_ortvalue_input(name, params)
        values = np.empty((n, self.num_positions), dtype=np.int64)
        for d in range(self.num_positions):
            if "value" in self._step_inputs:
                step.bind_ortvalue_input("value", buffers[d % 2])
            if "position" in self._step_inputs:
                step.bind_cpu_input("position", self._position(d, n))
            for spec in self.state_specs:
                if spec["name"] in self._step_inputs:
                    step.bind_ortvalue_input(spec["name"], state[spec["name"]])
                step.bind_output(f"new_{spec['name']}", device, 0)
            self.step_session.run_with_iobinding(step)
            new_state = step.get_outputs()[len(self.family.param_names):]
            state = {s["name"]: v for s, v in zip(self.state_specs, new_state)}
            draw.bind_cpu_input("noise", noise_columns[d])
            draw.bind_ortvalue_output("value", buffers[(d + 1) % 2])
            self.draw_session.run_with_iobinding(draw)
            values[:, d] = buffers[(d + 1) % 2].numpy()  # the only device -> host copy of the step
        return values
