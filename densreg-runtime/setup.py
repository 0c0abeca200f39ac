"""Build densreg-runtime from the repository's own sources: only the torch-free modules the
runtime imports (RUNTIME_MODULES), so a deployment box gets neither torch nor the training code."""

from setuptools import setup
from setuptools.command.build_py import build_py

PACKAGE_DIRS = {"densreg": "../densreg", "densreg.registry": "../registry",
                "densreg.registry.families": "../registry/families", "densreg.export": "../export"}
RUNTIME_MODULES = {
    "densreg": {"__init__"},
    "densreg.registry": {"__init__", "atomic", "datasets", "errors", "lazy", "limits", "returns", "saved", "transforms",
                         "version"},
    "densreg.registry.families": {"__init__", "base", "categorical", "gaussian_mixture", "logistic_mixture"},
    "densreg.export": {"__init__", "format", "legacy", "manifest", "protoscan", "runtime", "sessions"},
}


class RuntimeOnly(build_py):
    """Copy only RUNTIME_MODULES of each package."""

    def find_package_modules(self, package, package_dir):
        keep = RUNTIME_MODULES[package]
        return [m for m in super().find_package_modules(package, package_dir) if m[1] in keep]


setup(packages=list(PACKAGE_DIRS), package_dir=PACKAGE_DIRS, cmdclass={"build_py": RuntimeOnly})
