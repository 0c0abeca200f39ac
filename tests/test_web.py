"""`densreg web` (issue 33): an export folder as a static site, run by onnxruntime-web in a real browser.

The JavaScript pieces the page's exactness rests on (numpy's default_rng, the inverse-CDF draw, the
state tiling, the picture rules) are checked against numpy in Node.js; the page itself in Debian's
Chromium under Playwright, served from 127.0.0.1: its log-probabilities against the Python runtime,
its samples and completions against `densreg sample` and `densreg complete`, and a drawn stroke
against the heatmap; WebGPU with SwiftShader's software adapter. Without Chromium, Playwright or the
npm package the browser tests skip, saying which; .ci/run installs all three and sets
DENSREG_WEB_TESTS=required, which turns a skip into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from densreg.app.cli import cli
from densreg.export import export_model, webcheck, webpage
from densreg.export.runtime import ExportedModel
from densreg.registry import ConfigError, create_model, load_checkpoint
from densreg.registry.datasets import levels_to_8bit
from densreg.registry.families import Categorical

from blockers import blocker

ROOT = Path(__file__).resolve().parents[1]
NODE = shutil.which("node")


def browser_or_skip() -> None:
    reason = webcheck.missing()
    if reason is None and not (webpage.default_ort_dir() / webpage.ORT_FILES["wasm"][0]).is_file():
        reason = "onnxruntime-web is not installed: npm ci --prefix export/web"
    if reason and os.environ.get("DENSREG_WEB_TESTS") == "required":
        pytest.fail(f"DENSREG_WEB_TESTS=required, but {reason}")
    if reason:
        pytest.skip(reason)


def node(script: str) -> str:
    """Run an ES module script in Node.js from export/web (its modules import as ./NAME.js)."""
    if NODE is None:
        pytest.skip("Node.js is not installed")
    proc = subprocess.run([NODE, "--input-type=module"], input=script, cwd=webpage.WEB, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_rng_js_is_numpys_default_rng():
    """rng.js draws numpy.random.default_rng(seed).random(n) bit for bit, multi-word seeds included."""
    seeds, count = [0, 1, 3, 12345, 2**32 - 1, 2**32 + 5, 2**70 + 3], 2000
    out = node(f"""
        import {{ Generator }} from './rng.js';
        for (const seed of {json.dumps([str(s) for s in seeds])})
          console.log(JSON.stringify(Array.from(new Generator(BigInt(seed)).random({count}))));""")
    for seed, line in zip(seeds, out.splitlines()):
        assert np.array_equal(np.array(json.loads(line)), np.random.default_rng(seed).random(count)), seed


def test_js_draw_tile_and_picture_rules_match_python():
    """The page's draw is Categorical.draw_numpy's; its state tiling the runtime's; its picture rules
    registry.datasets.levels_to_8bit, quantize and PIL's convert("L")."""
    rng = np.random.default_rng(0)
    cases = []
    for k in (2, 3, 7, 256):
        logits = (rng.standard_normal((200, k)) * 3).astype(np.float32)
        logits[:20] = np.float32(0)  # ties: uniform conditionals
        noise = rng.random(200)
        noise[:5] = [0.0, 0.5, 1 / 3, 0.999999, 2 / 3]
        expected = Categorical(k).draw_numpy((logits,), noise)
        cases.append({"k": k, "logits": logits.astype(np.float64).tolist(), "noise": noise.tolist(),
                      "expected": expected.tolist()})
    rgb = rng.integers(0, 256, (500, 3), dtype=np.uint8)
    grey = np.asarray(Image.fromarray(rgb[None]).convert("L"))[0]
    state = rng.standard_normal((3, 1, 2, 4)).astype(np.float32)
    out = node(f"""
        import {{ draw, tile, levelTo8bit, quantize, luma }} from './densreg.js';
        const cases = {json.dumps(cases)};
        const draws = cases.map(({{k, logits, noise}}) =>
          noise.map((u, i) => draw(Float32Array.from(logits[i]), 0, k, u)));
        const eights = [2, 3, 4, 5, 7, 16, 255, 256].map((k) => Array.from({{length: k}}, (_, v) => levelTo8bit(v, k)));
        const back = [2, 3, 7, 256].map((k) => Array.from({{length: 256}}, (_, g) => quantize(g, k)));
        const greys = {json.dumps(rgb.tolist())}.map(([r, g, b]) => luma(r, g, b));
        const one = {{dtype: 'float32', shape: [3, 1, 2, 4],
                      data: Float32Array.from({json.dumps(state.ravel().tolist())})}};
        const tiled = tile(one, 1, 5);
        const flat = {{shape: tiled.shape, data: Array.from(tiled.data)}};
        console.log(JSON.stringify({{draws, eights, back, greys, tiled: flat}}));""")
    got = json.loads(out)
    for case, draws in zip(cases, got["draws"]):
        assert draws == case["expected"], case["k"]
    for k, eights in zip([2, 3, 4, 5, 7, 16, 255, 256], got["eights"]):
        assert eights == levels_to_8bit(np.arange(k), k).tolist(), k
    for k, back in zip([2, 3, 7, 256], got["back"]):
        assert back == ((np.arange(256) * k) // 256).tolist(), k
    assert got["greys"] == grey.tolist()
    assert got["tiled"]["shape"] == [3, 5, 2, 4]
    assert np.array_equal(np.array(got["tiled"]["data"], np.float32).reshape(3, 5, 2, 4),
                          np.broadcast_to(state, (3, 5, 2, 4)))


# ---- the site ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def markov_export(tmp_path_factory):
    """K = 4 levels, snake order (not raster): the general draw and completion by values kept."""
    model = create_model("markov", (1, 6, 6), 4, order=2, ordering="snake")
    with torch.no_grad():
        model.log_probs.copy_(torch.randn(model.log_probs.shape, generator=torch.Generator().manual_seed(1)) * 2)
    out = tmp_path_factory.mktemp("web") / "markov"
    export_model(model, out, parity=False)
    return out


@pytest.fixture(scope="module")
def nade_export(tmp_path_factory):
    """The committed NADE trained on the digits (1x8x8, K = 2), exported."""
    model, info = load_checkpoint(ROOT / "models" / "nade-digits.safetensors")
    out = tmp_path_factory.mktemp("web") / "nade"
    export_model(model, out, parity=False, name=info.qualified_name, source=info)
    return out


@pytest.fixture(scope="module")
def row_lstm_export(tmp_path_factory):
    """The committed Row LSTM trained on the digits: state tensors batched on axis 0 and on axis 1."""
    model, info = load_checkpoint(ROOT / "models" / "row-lstm-digits.safetensors")
    out = tmp_path_factory.mktemp("web") / "row-lstm"
    export_model(model, out, parity=False, name=info.qualified_name, source=info)  # about a minute: traced
    return out


def fake_ort(folder: Path, version: str | None = None) -> Path:
    """A stand-in for onnxruntime-web's dist folder: every file the site copies, and its package.json."""
    dist = folder / "onnxruntime-web" / "dist"
    dist.mkdir(parents=True)
    for names in webpage.ORT_FILES.values():
        for name in names:
            (dist / name).write_bytes(name.encode())
    (dist.parent / "package.json").write_text(json.dumps({"version": version or webpage.pinned_version()}))
    return dist


def test_site_holds_the_page_the_graphs_and_onnxruntime_web(markov_export, tmp_path):
    ort_dir = fake_ort(tmp_path)
    report = webpage.write_site(markov_export, tmp_path / "site", ort_dir=ort_dir)
    site = tmp_path / "site"
    files = sorted(str(p.relative_to(site)) for p in site.rglob("*") if p.is_file())
    assert files == sorted([*webpage.PAGE_FILES, "site.json", *(f"model/{n}" for n in webpage.MODEL_FILES),
                            *(f"ort/{n}" for names in webpage.ORT_FILES.values() for n in names)])
    for name in webpage.MODEL_FILES:
        assert (site / "model" / name).read_bytes() == (markov_export / name).read_bytes()
    assert (site / "ort" / "ort.wasm.min.mjs").read_bytes() == (ort_dir / "ort.wasm.min.mjs").read_bytes()
    info = json.loads((site / "site.json").read_text())
    assert info == {"model": "model/", "densreg": info["densreg"], "onnxruntime_web": webpage.pinned_version(),
                    "backends": ["wasm", "webgpu"]}
    assert report["total_bytes"] == sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    webpage.write_site(markov_export, site, ort_dir=ort_dir, webgpu=False)  # replaces the site whole
    assert not (site / "ort" / "ort.webgpu.min.mjs").exists() and (site / "ort" / "ort.wasm.min.mjs").exists()
    assert json.loads((site / "site.json").read_text())["backends"] == ["wasm"]
    lock = json.loads((webpage.WEB / "package-lock.json").read_text())  # the lock pins what package.json names
    assert lock["packages"]["node_modules/onnxruntime-web"]["version"] == webpage.pinned_version()


def test_missing_or_other_onnxruntime_web_is_one_line_saying_how_to_get_it(markov_export, tmp_path):
    with pytest.raises(ConfigError, match=r"not in .*: run `npm ci --prefix export/web` in the densreg checkout, "
                                          r"or pass --ort-dir"):
        webpage.write_site(markov_export, tmp_path / "site", ort_dir=tmp_path / "nothing")
    with pytest.raises(ConfigError, match=r"holds onnxruntime-web 0\.1\.0, but the page is pinned to"):
        webpage.write_site(markov_export, tmp_path / "site", ort_dir=fake_ort(tmp_path / "old", "0.1.0"))
    assert not (tmp_path / "site").exists()


def test_cli_web_runs_without_torch(markov_export, tmp_path):
    """`densreg web` is a built-in command that loads no plugin: torch is never imported."""
    (tmp_path / "sitecustomize.py").write_text(blocker(("torch",), "torch"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    command = [sys.executable, "-m", "densreg", "web", str(markov_export)]
    run = lambda *args: subprocess.run([*command, *map(str, args)], capture_output=True, text=True,  # noqa: E731
                                       env=env, timeout=120)
    proc = run("--out", tmp_path / "site", "--ort-dir", fake_ort(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["backends"] == ["wasm", "webgpu"] and (tmp_path / "site" / "index.html").is_file()
    proc = run("--out", tmp_path / "site2", "--ort-dir", tmp_path / "nothing")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "npm ci --prefix export/web" in proc.stderr
    proc = run("--out", tmp_path / "site", "--ort-dir", fake_ort(tmp_path / "again"))  # a site replaces a site
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    proc = run("--out", tmp_path / "notes", "--ort-dir", fake_ort(tmp_path / "third"))  # other files: refused
    assert proc.returncode == 1 and "refusing to replace" in proc.stderr and "--force" in proc.stderr
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


# ---- in the browser --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def playwright():
    browser_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:  # one per thread: every browser of the module comes from it
        yield playwright


@pytest.fixture(scope="module")
def browser(playwright):
    browser = webcheck.launch(playwright)
    yield browser
    browser.close()


def open_site(browser, export, folder, **options):
    site = folder / "site"
    if not site.exists():
        webpage.write_site(export, site, **options)
    server = webcheck.serve(site)
    url = server.__enter__()
    page = webcheck.open_page(browser, url)
    page.densreg_server = server
    return page


@pytest.fixture(params=["nade", "markov", pytest.param("row_lstm", marks=pytest.mark.slow)])
def site_page(request, browser, tmp_path_factory):
    export = request.getfixturevalue(f"{request.param}_export")
    page = open_site(browser, export, tmp_path_factory.mktemp(request.param), webgpu=request.param == "nade")
    yield request.param, export, page
    page.close()
    page.densreg_server.__exit__(None, None, None)


def cli_npz(*args) -> np.lib.npyio.NpzFile:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return np.load(args[args.index("--npz") + 1])


def test_page_scores_samples_and_completes_as_the_python_runtime(site_page, tmp_path):
    name, export, page = site_page
    model = ExportedModel(export, provider="cpu")
    golden = json.loads((export / "golden.json").read_text())
    backend = page.evaluate("densregPage.backend")
    assert page.text_content("#backend") == {"wasm": "WASM", "webgpu": "WebGPU"}[backend]
    assert page.text_content("#backend-why") == page.evaluate("densregPage.why") != ""
    # the folder's golden images: log p within 1e-3 nats of golden.json and of the Python runtime, per pixel too
    images = np.array(golden["images"])
    scored = page.evaluate("""async () => { const s = await densregPage.model.score(Int32Array.from(
        densregPage.model.golden.images.flat(4))); return [Array.from(s.logProb), Array.from(s.pixelLogProb)]; }""")
    assert np.abs(np.array(scored[0]) - golden["log_prob"]).max() <= 1e-3
    assert np.abs(np.array(scored[0]) - model.log_prob(images)).max() <= 1e-3
    assert np.abs(np.array(scored[1]).reshape(images.shape) - model.pixel_log_probs(images)).max() <= 1e-3
    # the numbers the page shows for its image (golden image 1 at load)
    shown = float(page.get_attribute("#log-prob", "data-value"))
    levels = np.array(page.evaluate("densregPage.last.levels")).reshape(1, *model.event_shape)
    assert np.array_equal(levels[0], images[0])
    assert abs(shown - model.log_prob(levels)[0]) <= 1e-3 and page.text_content("#log-prob") == f"{shown:.3f}"
    bits = -model.log_prob(levels)[0] / (model.num_positions * np.log(2))
    assert abs(float(page.text_content("#bits-per-dim")) - bits) <= 1e-4
    assert page.evaluate("densregPage.timings.firstScore") > 0
    # samples: the same images as `densreg sample` for the seed
    drawn = webcheck.run_view(page, "sample", **{"sample-n": 5, "sample-seed": 3})
    expected = cli_npz("sample", export, "-n", 5, "--seed", 3, "--out", tmp_path / "s.png", "--npz", tmp_path / "s.npz")
    assert np.array_equal(np.array(drawn["images"]).reshape(5, *model.event_shape), expected["samples"])
    # completions of an uploaded picture: read as `--images FILE.png` reads it, completed as `densreg complete`
    picture = levels_to_8bit(images[2], model.num_categories)[0]
    Image.fromarray(picture).save(tmp_path / "upload.png")
    page.set_input_files("#upload", str(tmp_path / "upload.png"))
    uploaded = json.dumps(",".join(map(str, images[2].ravel())))
    page.wait_for_function(f"densregPage.last.levels.join() === {uploaded}")
    raster = np.array_equal(model.order, np.arange(model.num_positions))
    keep = ("--keep-rows", 3) if raster else ("--keep", 14)
    done = webcheck.run_view(page, "complete", **{"keep": keep[1], "complete-n": 3, "complete-seed": 5})
    expected = cli_npz("complete", export, "--images", tmp_path / "upload.png", *keep, "-n", 3, "--seed", 5,
                       "--out", tmp_path / "c.png", "--npz", tmp_path / "c.npz")
    assert done["keep"] == int(expected["keep"])
    assert np.array_equal(np.array(done["images"]).reshape(1, 3, *model.event_shape), expected["completions"])
    assert not page.densreg_errors, page.densreg_errors
    for view in ("score", "complete", "sample"):
        shot = tmp_path / f"web-{name}-{view}.png"
        page.locator(f"#{view}-view").screenshot(path=str(shot))
        assert shot.stat().st_size > 1000  # the docs' pictures are benchmarks/web.py --screenshots's


def heatmap_pixels(page) -> list[int]:
    return page.evaluate("""Array.from(document.getElementById('heatmap').getContext('2d').getImageData(0, 0,
        document.getElementById('heatmap').width, document.getElementById('heatmap').height).data)""")


def test_a_drawn_stroke_is_scored_and_changes_the_heatmap(browser, nade_export, tmp_path):
    page = open_site(browser, nade_export, tmp_path)
    try:
        model = ExportedModel(nade_export, provider="cpu")
        page.click("#clear")
        page.wait_for_function("densregPage.last.levels.every((v) => v === 0)")
        blank, blank_heat = page.evaluate("densregPage.last.logProb"), heatmap_pixels(page)
        scored = page.evaluate("densregPage.scored")
        webcheck.draw(page, [(0.5, 0.15), (0.5, 0.87)])  # a vertical stroke down the middle: a "1"
        page.wait_for_function(f"densregPage.scored > {scored} && !densregPage.last.levels.every((v) => v === 0)")
        page.wait_for_timeout(300)  # the last move's score
        page.wait_for_function("densregPage.last.levels.join() === densregPage.drawing.levels.join()")
        levels = np.array(page.evaluate("densregPage.last.levels")).reshape(1, *model.event_shape)
        column = levels[0, 0, :, 3:5].any(axis=1)
        assert column[2:7].all() and levels[0, 0, :, :2].sum() == 0  # ink down the middle only
        drawn = page.evaluate("densregPage.last.logProb")
        assert abs(drawn - model.log_prob(levels)[0]) <= 1e-3 and drawn != blank
        assert abs(float(page.get_attribute("#log-prob", "data-value")) - drawn) < 1e-9
        assert heatmap_pixels(page) != blank_heat
        nll = np.array(page.evaluate("densregPage.last.pixelNll")).reshape(model.event_shape[1:])
        assert np.abs(nll + model.pixel_log_probs(levels)[0].sum(0)).max() <= 1e-3
        page.locator("#score-view").screenshot(path=str(tmp_path / "stroke.png"))
        assert not page.densreg_errors, page.densreg_errors
    finally:
        page.close()
        page.densreg_server.__exit__(None, None, None)


def test_webgpu_is_used_where_the_browser_has_an_adapter(playwright, nade_export, tmp_path):
    """With a WebGPU adapter (SwiftShader's, in software) the page loads the WebGPU build, says so, and
    still gives the Python runtime's numbers (int64 and shape ops run on the CPU beside it)."""
    model = ExportedModel(nade_export, provider="cpu")
    browser = webcheck.launch(playwright, webgpu=True)
    page = open_site(browser, nade_export, tmp_path)
    try:
        why = page.evaluate("densregPage.why")
        if page.evaluate("densregPage.backend") != "webgpu":
            assert "failed" not in why, why  # an adapter that the page could not use is a bug
            pytest.skip(f"this Chromium offers no WebGPU adapter, not even SwiftShader's: {why}")
        assert page.text_content("#backend") == "WebGPU" and why == "WebGPU adapter found"
        images = np.array(json.loads((nade_export / "golden.json").read_text())["images"])
        scored = page.evaluate("async () => Array.from((await densregPage.model.score(Int32Array.from("
                               "densregPage.model.golden.images.flat(4)))).logProb)")
        assert np.abs(np.array(scored) - model.log_prob(images)).max() <= 1e-3
        drawn = webcheck.run_view(page, "sample", **{"sample-n": 3, "sample-seed": 2})
        assert np.array_equal(np.array(drawn["images"]).reshape(3, *model.event_shape), model.sample(3, seed=2))
        assert not page.densreg_errors, page.densreg_errors
    finally:
        page.close()
        page.densreg_server.__exit__(None, None, None)
        browser.close()
