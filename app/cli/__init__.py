"""The ``densreg`` command line: a click group, one module per topic.

Every error a user can cause is a DensregError (or an OSError): one line on stderr,
exit status 1, and no traceback unless ``--debug`` (or DENSREG_DEBUG=1).

There is one way to add a command: a ``register_commands(cli)`` hook implementation that
calls ``cli.add_command``. Each built-in topic module below has one, and a plugin's runs
through the ``densreg`` entry points when ``main`` starts.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import click

from densreg.app.launcher import launched, run_then_exit
from densreg.registry import DensregError, __version__, limits

from .common import ARGV_KEY

# Built-in commands by the module that registers them (its ``register_commands``), imported only
# when one of its commands runs, so `densreg sample EXPORT_DIR` never imports torch.
COMMAND_MODULES = {"plugins": "listing", "models": "listing", "datasets": "listing", "info": "listing",
                   "train": "train", "eval": "evaluate", "score": "score", "sample": "sample",
                   "complete": "complete", "features": "features", "plot": "plot", "check": "check",
                   "export": "export", "runtime": "export"}
# Built-in commands that use no plugin's command: main() loads no plugin for them, so on an
# export folder they run without torch.
WITHOUT_PLUGINS = ("eval", "sample", "runtime", "score", "complete", "features")


class DensregGroup(click.Group):
    """A click group that turns user errors into one line and a non-zero exit, and imports a
    built-in command's module when the command is first looked up."""

    def list_commands(self, ctx):
        return sorted({*COMMAND_MODULES, *self.commands})

    def get_command(self, ctx, name):
        if name not in self.commands and name in COMMAND_MODULES:
            load_builtin(COMMAND_MODULES[name])
        return self.commands.get(name)

    def parse_args(self, ctx, args):
        ctx.meta[ARGV_KEY] = list(args)  # the arguments as given, which `train --nproc` passes to torchrun
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:  # noqa: BLE001 - the top of the program
            if (ctx.obj or {}).get("debug") or os.environ.get("DENSREG_DEBUG") == "1":
                raise
            if isinstance(exc, (DensregError, OSError)):
                click.echo(f"Error: {exc}", err=True)
            else:
                click.echo(f"Error: unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
                           err=True)
            ctx.exit(1)


@click.group(cls=DensregGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="densreg")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option("--ignore-memory-limit", is_flag=True,
              help=f"Run work whose estimated memory exceeds what is available (also {limits.IGNORE_ENV}=1).")
@click.pass_context
def cli(ctx, debug, ignore_memory_limit):
    """densreg: exact-likelihood density models for discrete images, from plugins."""
    ctx.ensure_object(dict)["debug"] = debug
    if ignore_memory_limit:
        os.environ[limits.IGNORE_ENV] = "1"


_LOADED: set[str] = set()


def load_builtin(module: str) -> None:
    """Import the built-in command module ``module`` (once) and register its commands."""
    if module not in _LOADED:
        _LOADED.add(module)
        importlib.import_module(f"{__name__}.{module}").register_commands(cli)


def load_builtins() -> None:
    """Register every built-in command."""
    for module in dict.fromkeys(COMMAND_MODULES.values()):
        load_builtin(module)


def add_plugin_commands(host) -> None:
    """Run every plugin's ``register_commands(cli)``; a command name already taken (a built-in,
    or an earlier plugin's) keeps its first owner, and the clash is recorded in ``host.clashes``."""
    taken: dict = {}
    load_builtins()  # the built-ins own their names before any plugin registers

    def before(info):
        taken.clear()
        taken.update(cli.commands)
        return {"cli": cli}

    def after(info):
        for name, command in taken.items():
            if cli.commands.get(name) is not command:
                cli.commands[name] = command
                host.clashes.append(f"command {name!r} of plugin {info.name} ({info.distribution or 'in-process'}) "
                                    f"is already a densreg command; the plugin's is ignored")

    host.call_each("register_commands", before, after)


def main(argv=None) -> None:
    """Console entry point: load plugins' commands, then run."""
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print as the bytes they are
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    args = sys.argv[1:] if argv is None else list(argv)
    if next((a for a in args if not a.startswith("-")), None) in WITHOUT_PLUGINS:
        cli.main(args=args, prog_name="densreg")
        return
    from densreg.registry import api  # imports torch

    try:
        add_plugin_commands(api.get_catalog().host)
    except DensregError as exc:  # strict plugin mode: one line, the traceback with --debug
        if "--debug" in args or os.environ.get("DENSREG_DEBUG") == "1":
            traceback.print_exception(exc)
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    if launched():  # a torchrun worker: exits without interpreter shutdown (see run_then_exit)
        run_then_exit(lambda: cli.main(args=args, prog_name="densreg"))
    cli.main(args=args, prog_name="densreg")
