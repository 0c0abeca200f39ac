"""The page of `densreg web` in headless Chromium: load, score and completion times, and the site's size.

    python benchmarks/web.py [--models nade-mnist,row-lstm-mnist] [--loads 3] [--repeats 20]
                             [--out benchmarks/results/web.md] [--screenshots docs/deployment/img]

Per committed model (models/NAME.safetensors, exported here): the site's bytes (page, model,
onnxruntime-web with and without its WebGPU build); the time from the start of navigation to the
first score shown, in a fresh browser context each load (nothing cached: the .wasm is fetched and
compiled each time), median of ``--loads``; then, in one page, the time of one score (one image,
median of ``--repeats``), of one completion of the lower half (14 rows kept; 784 steps, 392 values
drawn) and of one sample (784 steps), each median of 5 after one untimed run, next to the Python
runtime's (onnxruntime CPU, same machine).
Before timing, the page's parity is checked: golden log-probs within 1e-3 nats of the Python
runtime, and samples and completions for a seed equal to the Python runtime's. Chromium runs
headless without a GPU, so the page uses WASM (single-threaded: a static server gives no
cross-origin isolation). ``--screenshots`` also writes one screenshot of each view of the first
model's page (the docs' pictures).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from densreg.app.completion import complete
from densreg.export import export_model, webcheck, webpage
from densreg.export.runtime import ExportedModel
from densreg.registry import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
KEEP_ROWS = 14


def mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def median_ms(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def page_ms(page, script: str, repeats: int) -> float:
    """Median milliseconds of an async JS expression over ``repeats`` runs, timed in the page."""
    return page.evaluate(f"""async () => {{ const times = []; await ({script});  // one untimed run first
        for (let i = 0; i < {repeats}; i++) {{
          const t = performance.now(); await ({script}); times.push(performance.now() - t); }}
        times.sort((a, b) => a - b); return times[Math.floor(times.length / 2)]; }}""")


def check_parity(page, model: ExportedModel) -> dict:
    """The page's golden log-probs, a sample and a completion against the Python runtime."""
    images = np.array(json.loads((model.path / "golden.json").read_text())["images"])
    scored = page.evaluate("async () => Array.from((await densregPage.model.score(Int32Array.from("
                           "densregPage.model.golden.images.flat(4)))).logProb)")
    diff = float(np.abs(np.array(scored) - model.log_prob(images)).max())
    drawn = np.array(page.evaluate("async () => Array.from(await densregPage.model.sample(4, 7))"))
    keep = KEEP_ROWS * model.event_shape[2]
    completed = np.array(page.evaluate(f"async () => Array.from(await densregPage.model.complete("
                                       f"Int32Array.from(densregPage.model.golden.images[2].flat(3)), {keep}, 2, 9))"))
    same_samples = np.array_equal(drawn.reshape(4, *model.event_shape), model.sample(4, seed=7))
    same_completions = np.array_equal(completed.reshape(1, 2, *model.event_shape),
                                      complete(model, images[2:3], keep, 2, 9))
    if diff > 1e-3 or not same_samples or not same_completions:
        raise SystemExit(f"parity failed: log_prob diff {diff}, samples equal {same_samples}, "
                         f"completions equal {same_completions}")
    return {"log_prob_max_diff": diff, "samples_equal": same_samples, "completions_equal": same_completions}


def measure(name: str, browser, tmp: Path, loads: int, repeats: int, screenshots: Path | None) -> dict:
    model_obj, info = load_checkpoint(ROOT / "models" / f"{name}.safetensors")
    export = tmp / name
    export_model(model_obj, export, parity=False, name=info.qualified_name, source=info)
    site = tmp / f"{name}-site"
    report = webpage.write_site(export, site)
    wasm_only = webpage.write_site(export, tmp / f"{name}-wasm", webgpu=False)["total_bytes"]
    model = ExportedModel(export, provider="cpu")
    images = np.array(json.loads((export / "golden.json").read_text())["images"])
    row = {"model": name, "sizes": report["sizes"], "total": report["total_bytes"], "wasm_only": wasm_only}
    with webcheck.serve(site) as url:
        first = []
        for _ in range(loads):
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            page = webcheck.open_page(context, url)
            first.append(page.evaluate("densregPage.timings.firstScore"))
            row["backend"] = page.evaluate("densregPage.backend")
            context.close()
        row["first_score_ms"] = statistics.median(first)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = webcheck.open_page(context, url)
        row["parity"] = check_parity(page, model)
        image, keep = "Int32Array.from(densregPage.model.golden.images[2].flat(3))", KEEP_ROWS * model.event_shape[2]
        row["score_ms"] = page_ms(page, f"densregPage.model.score({image})", repeats)
        row["complete_ms"] = page_ms(page, f"densregPage.model.complete({image}, {keep}, 1, 0)", 5)
        row["sample_ms"] = page_ms(page, "densregPage.model.sample(1, 0)", 5)
        row["python"] = {"score_ms": median_ms(lambda: model.log_prob(images[2:3]), repeats),
                         "complete_ms": median_ms(lambda: complete(model, images[2:3], keep, 1, 0), 5),
                         "sample_ms": median_ms(lambda: model.sample(1, seed=0), 5)}
        if screenshots is not None:
            screenshots.mkdir(parents=True, exist_ok=True)
            page.click("#clear")  # a drawn 7: a bar, then a stroke down to the left
            webcheck.draw(page, [(0.3, 0.25), (0.7, 0.25), (0.62, 0.45), (0.5, 0.8)])
            page.wait_for_function("densregPage.last.levels.join() === densregPage.drawing.levels.join()")
            webcheck.run_view(page, "complete", **{"keep": KEEP_ROWS, "complete-n": 4, "complete-seed": 0})
            webcheck.run_view(page, "sample", **{"sample-n": 16, "sample-seed": 0})
            for view in ("score", "complete", "sample"):
                page.locator(f"#{view}-view").screenshot(path=str(screenshots / f"web-{view}.png"))
        context.close()
    return row


def table(rows: list[dict], args) -> str:
    load = os.getloadavg()[0]
    lines = ["# The web page in headless Chromium (`densreg web`)", "",
             f"`python benchmarks/web.py --models {args.models} --loads {args.loads} --repeats {args.repeats}` on "
             f"{time.strftime('%Y-%m-%d at %H:%M UTC', time.gmtime())}; 2-core shared machine, load average "
             f"{load:.1f} at the end; Debian's Chromium, headless without a GPU, so the page runs onnxruntime-web "
             f"{webpage.pinned_version()} on WASM, one thread (a plain static server gives no cross-origin "
             "isolation, so no SharedArrayBuffer). Python: densreg's runtime, onnxruntime CPU, same machine.", "",
             "First score: from the start of navigation to the first log p shown (fetching and compiling the "
             "WASM build, opening both graphs, scoring one image), a fresh browser context each load, median "
             f"of {args.loads}. Score: one image, median of {args.repeats}. Completion: one image, the lower "
             f"half ({KEEP_ROWS} rows kept: all 784 steps run, the kept values fed in, the other 392 drawn). "
             "Sample: one image, 784 steps. Completion and sample: median of 5, after one untimed run. "
             "Each browser time is measured inside the page (performance.now()). Before timing, the page "
             "matched the Python runtime: golden log-probs within 1e-3 nats, a sample and a completion equal "
             "for the same seed.", "",
             "| model | site | of it: onnxruntime-web | site, WASM only | first score | score | completion | sample "
             "| Python: score / completion / sample | golden log p diff |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        py = r["python"]
        lines.append(f"| {r['model']} | {mb(r['total'])} | {mb(r['sizes']['onnxruntime_web'])} | {mb(r['wasm_only'])} "
                     f"| {r['first_score_ms'] / 1e3:.2f} s | {r['score_ms']:.1f} ms | {r['complete_ms']:.0f} ms "
                     f"| {r['sample_ms']:.0f} ms | {py['score_ms']:.1f} / {py['complete_ms']:.0f} / "
                     f"{py['sample_ms']:.0f} ms | {r['parity']['log_prob_max_diff']:.1g} nats |")
    lines += ["", "The site holds the WASM build (ort.wasm.min.mjs, 14 MB of .wasm) and the WebGPU build (27 MB, "
              "loaded only where the browser has a WebGPU adapter); `densreg web --no-webgpu` leaves the latter "
              "out. A server that compresses (gzip or brotli) sends the .wasm files at about a quarter of their "
              "size. On this shared machine (other sessions at work) the same measurement repeated varies by up "
              "to 2x: compare the browser with Python within one row, not rows of different runs.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="nade-mnist,row-lstm-mnist")
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "web.md"))
    parser.add_argument("--screenshots", default=None, help="folder for one screenshot of each view (first model)")
    args = parser.parse_args(argv)
    reason = webcheck.missing()
    if reason:
        raise SystemExit(f"cannot run the browser: {reason}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, webcheck.chromium() as browser:
        for i, name in enumerate(args.models.split(",")):
            shots = Path(args.screenshots) if args.screenshots and i == 0 else None
            rows.append(measure(name, browser, Path(tmp), args.loads, args.repeats, shots))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    text = table(rows, args)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
