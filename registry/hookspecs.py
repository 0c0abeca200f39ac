"""The hooks a densreg plugin may implement (entry-point group ``densreg``).

A plugin is a plain module with ``@hookimpl`` functions named after these specs. Each
implementation is called with only the arguments it declares, so a spec may gain an argument
without breaking the plugins written before it.
"""

import pluggy

hookspec = pluggy.HookspecMarker("densreg")
hookimpl = pluggy.HookimplMarker("densreg")


@hookspec
def register_models(register):
    """Add models: call ``register(factory, name=..., description=...)`` once per model.

    ``factory(event_shape=(C, H, W), num_categories=K, **config)`` returns a
    ``DensityModel``; a ``DensityModel`` subclass is itself such a factory. Or pass its import
    path, ``"package.module:MyModel"``, with ``name`` (and ``description``): it is imported on
    first use, so listing imports no torch.
    """


@hookspec
def register_datasets(register):
    """Add datasets: call ``register(Dataset(...))`` once per dataset."""


@hookspec
def register_checks(register):
    """Add conformance checks: call ``register(name, check)``; ``check(subject)`` returns what passed and raises
    ``CheckFailed`` or ``CheckSkipped`` (``densreg.registry.conformance``). densreg's exporter adds ``export``."""


@hookspec
def register_commands(cli):
    """Add commands to the ``densreg`` click group: ``cli.add_command(command)`` (built-ins do the same)."""
