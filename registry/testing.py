"""The conformance checks as pytest tests, one test per check, for a plugin's own suite.

Three lines in a plugin's test file::

    from densreg.registry.testing import ModelConformance

    class TestMyModel(ModelConformance):
        model, config = "mymodel", {"hidden": 8}

or, parametrized (any subset of the checks, several models)::

    from densreg.registry.testing import conformance_tests

    @pytest.mark.parametrize("case", conformance_tests("mymodel", hidden=8))
    def test_conformance(case):
        case.run()

A failed check fails its test with the check's detail; a skipped one (export
without an exporter) skips it with the reason. Options as in ``conformance.run_check``:
``prepare``, ``orderings``, ``spaces``. Needs pytest (imported here only).

Helpers for a plugin's own tests live in ``densreg.registry.conformance``: ``all_images``
(every image of a tiny space) and ``randomize`` (random parameters, ``buffers=True`` for
random float buffers too).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

from .conformance import CHECKS, CheckResult, Subject, one_torch_thread, run_check


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    """Module-wide ``one_torch_thread``: import it into a test module to run that module's
    tests with torch single-threaded (tiny tensors, many small ops)."""
    with one_torch_thread():
        yield


@dataclass
class ConformanceCase:
    """One check on one model: ``run()`` passes, or calls pytest.fail / pytest.skip."""

    check: str
    model: str | Callable
    config: dict[str, Any] = field(default_factory=dict)
    prepare: Callable | None = None
    orderings: tuple[str, ...] | None = None
    spaces: tuple | None = None

    @property
    def id(self) -> str:
        label = self.model if isinstance(self.model, str) else getattr(self.model, "__name__", "model")
        return f"{label}-{self.check}"

    def result(self) -> CheckResult:
        return run_check(self.check, Subject(self.model, self.config, self.prepare, self.orderings, self.spaces))

    def run(self) -> CheckResult:
        result = self.result()
        if result.skipped:
            pytest.skip(f"{self.check}: {result.detail}")
        if result.failed:
            pytest.fail(f"conformance check {self.check!r} failed for {self.id}: {result.detail}", pytrace=False)
        return result


def conformance_tests(model: str | Callable, *, checks=None, skip=(), prepare: Callable | None = None,
                      orderings=None, spaces=None, marks=(), **config) -> list:
    """``pytest.param`` cases, one per check (default all of CHECKS but ``skip``), for
    ``@pytest.mark.parametrize("case", ...)``; ``marks`` are added to every case."""
    return [pytest.param(ConformanceCase(name, model, dict(config), prepare, orderings, spaces), marks=marks,
                         id=ConformanceCase(name, model).id)
            for name in (checks or CHECKS) if name not in skip]


def _plain(obj, name: str):
    """A class attribute as set, not bound: a function stays a function, a staticmethod unwraps."""
    value = inspect.getattr_static(obj, name)
    return value.__func__ if isinstance(value, (staticmethod, classmethod)) else value


class ModelConformance:
    """Subclass as ``class TestX(ModelConformance)`` and set ``model`` (registered name or
    factory) and ``config``; optionally ``prepare(model, seed)``, ``orderings``, ``spaces``,
    ``skip_checks``."""

    model: str | Callable | None = None
    config: dict[str, Any] = {}
    prepare: Callable | None = None
    orderings: tuple[str, ...] | None = None
    spaces: tuple | None = None
    skip_checks: tuple[str, ...] = ()

    def _run(self, check: str) -> None:
        model, prepare = _plain(self, "model"), _plain(self, "prepare")
        if model is None:
            pytest.skip("set `model` on the ModelConformance subclass")
        if check in self.skip_checks:
            pytest.skip(f"{check} listed in skip_checks")
        ConformanceCase(check, model, dict(self.config), prepare, self.orderings, self.spaces).run()

    def test_normalization(self):
        self._run("normalization")

    def test_chain_rule(self):
        self._run("chain_rule")

    def test_causality(self):
        self._run("causality")

    def test_step(self):
        self._run("step")

    def test_sampling(self):
        self._run("sampling")

    def test_round_trip(self):
        self._run("round_trip")

    def test_export(self):
        self._run("export")
