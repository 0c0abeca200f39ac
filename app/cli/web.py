"""`densreg web`: an export folder as a static site that scores, completes and samples in the browser."""

from __future__ import annotations

import click

from densreg.registry import hookimpl

from .common import echo_json, writes


@click.command(name="web")
@click.argument("export_dir", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder to write the site to (a previous site there is replaced whole): index.html, the page's "
                   "modules, model/, ort/.")
@click.option("--ort-dir", type=click.Path(file_okay=False), default=None,
              help="The dist folder of the npm package onnxruntime-web at the pinned version (default: "
                   "$DENSREG_ORT_WEB_DIR, else export/web/node_modules/onnxruntime-web/dist, which "
                   "`npm ci --prefix export/web` installs).")
@click.option("--webgpu/--no-webgpu", default=True, show_default=True,
              help="Also ship onnxruntime-web's WebGPU build, used where the browser has WebGPU (else WASM only).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@writes(out="site")
def web(export_dir, out, ort_dir, webgpu, as_json):
    """Write a static site that scores, completes and samples an export in the browser.

    The page runs the export's graphs in onnxruntime-web (WebGPU where the browser offers it,
    WASM otherwise) and works offline from any static file server, e.g.
    `python -m http.server -d SITE`. Its log-probabilities are the Python runtime's, and its
    samples and completions for a seed are those of `densreg sample` and `densreg complete`.
    """
    from densreg.export.webpage import write_site

    report = write_site(export_dir, out, ort_dir=ort_dir, webgpu=webgpu)
    if as_json:
        echo_json(report)
        return
    click.echo(f"wrote a site for {report['model']} to {out} ({report['total_bytes'] / 1e6:.1f} MB: page "
               f"{report['sizes']['page'] / 1e3:.0f} kB, model {report['sizes']['model'] / 1e6:.2f} MB, "
               f"onnxruntime-web {report['onnxruntime_web']} {report['sizes']['onnxruntime_web'] / 1e6:.1f} MB, "
               f"backends {' and '.join(report['backends'])}); serve it with `python -m http.server -d {out}`")


@hookimpl
def register_commands(cli):
    cli.add_command(web)
