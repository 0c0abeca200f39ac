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

# Built-in commands: the module that registers each (its ``register_commands``), imported only
# when one of its commands runs, so `densreg sample EXPORT_DIR` never imports torch; and the
# first paragraph of its help, which `densreg --help` shortens as click does, without importing
# any of them (tests/test_cli.py keeps each equal to the command's own).
BUILTIN_COMMANDS = {
    "check": ("check", "Check that MODEL honours the density-model contract, on tiny images."),
    "complete": ("complete", "Complete images from their first values, sampling the rest exactly from "
                             "p(x_rest | x_kept)."),
    "datasets": ("listing", "List registered datasets: shape C,H,W, dimension (values per item) and number "
                            "of levels K, or \"continuous\" for real-valued data."),
    "eval": ("evaluate", "NLL (nats per image) and bits/dim of a checkpoint (or an export folder) on a "
                         "dataset split."),
    "export": ("export", "Export a checkpoint to an ONNX folder a serving team can run with onnxruntime and "
                         "numpy alone, check it, and compare onnxruntime with torch."),
    "features": ("features", "Write a model's features of a dataset split (or of --images) to an .npz archive."),
    "info": ("listing", "Show a model's config with defaults and its free-parameter count."),
    "models": ("listing", "List registered models, optionally filtered by a glob PATTERN (e.g. 'mark*')."),
    "plot": ("plot", "Draw train and valid NLL per epoch from training logs (STEM.log.jsonl), or images as "
                     "a grid."),
    "plugin": ("plugin", "Write a new plugin package: a model, a dataset and conformance tests."),
    "plugins": ("listing", "List installed plugins: distribution, version, hooks, load errors."),
    "pretrained": ("listing", "List the pretrained models installed with densreg: name, dataset, test NLL, "
                              "parameters, size, sha256 and license."),
    "runtime": ("export", "onnxruntime version, device, and the providers listed and actually usable."),
    "sample": ("sample", "Draw exact samples from a checkpoint (or an export folder) and write an image grid."),
    "score": ("score", "Score images by how anomalous they are under a checkpoint or an export folder."),
    "train": ("train", "Fit MODEL on a dataset's train split, or on your own --images or --table, and write a "
                       "checkpoint."),
    "web": ("web", "Write a static site that scores, completes and samples an export in the browser."),
}
COMMAND_MODULES = {name: module for name, (module, _) in BUILTIN_COMMANDS.items()}
# Built-in commands that use no plugin's command: main() loads no plugin for them, so on an
# export folder they run without torch.
WITHOUT_PLUGINS = ("eval", "sample", "runtime", "score", "complete", "features", "web")


class DensregGroup(click.Group):
    """A click group that turns user errors into one line and a non-zero exit, and imports a
    built-in command's module when the command is first looked up."""

    def list_commands(self, ctx):
        return sorted({*COMMAND_MODULES, *self.commands})

    def get_command(self, ctx, name):
        if name not in self.commands and name in COMMAND_MODULES:
            load_builtin(COMMAND_MODULES[name])
        return self.commands.get(name)

    def format_commands(self, ctx, formatter):
        """The commands with their short help, as click writes them, without importing the
        module of a built-in command that has not run (its help comes from BUILTIN_COMMANDS)."""
        commands = [(name, self.commands.get(name) or click.Command(name, help=BUILTIN_COMMANDS[name][1]))
                    for name in self.list_commands(ctx)]
        commands = [(name, command) for name, command in commands if not command.hidden]
        if commands:
            limit = formatter.width - 6 - max(len(name) for name, _ in commands)
            with formatter.section("Commands"):
                formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in commands])

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
    loaded or not, or an earlier plugin's) keeps its first owner, and the clash is recorded in
    ``host.clashes``. No built-in command module is imported."""
    taken: dict = {}

    def before(info):
        taken.clear()
        taken.update(dict.fromkeys(COMMAND_MODULES))  # None: a built-in whose module is not loaded yet
        taken.update(cli.commands)
        return {"cli": cli}

    def after(info):
        for name, command in taken.items():
            if cli.commands.get(name) is not command:
                restore_command(name, command)
                host.clashes.append(f"command {name!r} of plugin {info.name} ({info.distribution or 'in-process'}) "
                                    f"is already a densreg command; the plugin's is ignored")

    host.call_each("register_commands", before, after)


def restore_command(name: str, command) -> None:
    """Give ``name`` back to ``command``; None: to the built-in that registers it when first used."""
    if command is None:
        del cli.commands[name]
    else:
        cli.commands[name] = command


def main(argv=None) -> None:
    """Console entry point: load plugins' commands, then run."""
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print as the bytes they are
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    args = sys.argv[1:] if argv is None else list(argv)
    if next((a for a in args if not a.startswith("-")), None) in WITHOUT_PLUGINS:
        cli.main(args=args, prog_name="densreg")
        return
    from densreg.registry import api  # no torch: the built-in plugins register models by import path

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
