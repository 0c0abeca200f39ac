// The page: draw or upload an image, score it (log p in nats and bits/dim, a per-pixel -log p
// heatmap), complete it from its kept rows, draw samples with a seed. Everything runs in this
// browser; window.densregPage exposes the model and the numbers shown (the tests read them).

import { ExportedModel, levelTo8bit, loadOrt, luma, pickBackend, quantize } from './densreg.js';

const BASE = new URL('./', import.meta.url);
const SUPER = 8; // drawing resolution per model pixel (strokes are box-averaged down, then quantized)
const UNSEEN = [70, 110, 200]; // the unseen part of a kept image, as `densreg complete` draws it
const HEAT = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]]; // inferno-like
const $ = (id) => document.getElementById(id);
const page = { timings: {}, ready: null };
window.densregPage = page;

function setStatus(text) { $('status').textContent = text; }

async function openModel() {
  const params = new URLSearchParams(location.search);
  let { backend, why } = await pickBackend(params.get('backend'));
  const site = await (await fetch(new URL('site.json', BASE))).json();
  const modelUrl = new URL(site.model, BASE);
  try {
    page.model = await ExportedModel.open(await loadOrt(backend, BASE), modelUrl, backend);
  } catch (error) {
    if (backend !== 'webgpu') throw error;
    why = `WebGPU failed (${error.message}), so WASM`;
    backend = 'wasm';
    page.model = await ExportedModel.open(await loadOrt(backend, BASE), modelUrl, backend);
  }
  Object.assign(page, { backend, why, site });
  $('backend').textContent = backend === 'webgpu' ? 'WebGPU' : 'WASM';
  $('backend').title = why;
  $('backend-why').textContent = why;
  $('ort-version').textContent = site.onnxruntime_web;
}

// ---- pictures ---------------------------------------------------------------------------
function toRgba(image, model) {
  const [c, h, w] = model.eventShape, k = model.k, rgba = new Uint8ClampedArray(h * w * 4);
  for (let p = 0; p < h * w; p++) {
    for (let j = 0; j < 3; j++) rgba[p * 4 + j] = levelTo8bit(image[(c === 3 ? j : 0) * h * w + p], k);
    rgba[p * 4 + 3] = 255;
  }
  return rgba;
}

/** n images, flat levels, as pictures. */
function pictures(images, n, model) {
  const d = model.positions;
  return Array.from({ length: n }, (_, i) => toRgba(images.subarray(i * d, (i + 1) * d), model));
}

function paint(canvas, cells, columns, model, scale) {
  const [, h, w] = model.eventShape, gap = 2;
  const rows = Math.ceil(cells.length / columns);
  canvas.width = columns * (w * scale + gap) - gap;
  canvas.height = rows * (h * scale + gap) - gap;
  const context = canvas.getContext('2d'), small = new OffscreenCanvas(w, h);
  context.fillStyle = '#fff';
  context.fillRect(0, 0, canvas.width, canvas.height);
  context.imageSmoothingEnabled = false;
  cells.forEach((rgba, i) => {
    small.getContext('2d').putImageData(new ImageData(rgba, w, h), 0, 0);
    context.drawImage(small, (i % columns) * (w * scale + gap), Math.floor(i / columns) * (h * scale + gap),
      w * scale, h * scale);
  });
}

function heatColour(t) {
  const x = Math.min(Math.max(t, 0), 1) * (HEAT.length - 1), i = Math.min(Math.floor(x), HEAT.length - 2);
  return HEAT[i].map((a, j) => Math.round(a + (HEAT[i + 1][j] - a) * (x - i)));
}

// ---- the drawn image --------------------------------------------------------------------
class Drawing {
  constructor(model, canvas) {
    const [c, h, w] = model.eventShape;
    Object.assign(this, { model, canvas, c, h, w });
    this.board = new OffscreenCanvas(w * SUPER, h * SUPER);
    this.levels = new Int32Array(c * h * w);
    this.scale = Math.max(1, Math.floor(280 / Math.max(h, w)));
    canvas.width = w * this.scale;
    canvas.height = h * this.scale;
  }

  /** Show `levels` and make them the board (so strokes add to them). */
  set(levels) {
    this.levels = Int32Array.from(levels);
    const context = this.board.getContext('2d'), rgba = toRgba(this.levels, this.model);
    for (let p = 0; p < this.h * this.w; p++) {
      context.fillStyle = `rgb(${rgba[p * 4]},${rgba[p * 4 + 1]},${rgba[p * 4 + 2]})`;
      context.fillRect((p % this.w) * SUPER, Math.floor(p / this.w) * SUPER, SUPER, SUPER);
    }
    this.show();
  }

  show() { paint(this.canvas, [toRgba(this.levels, this.model)], 1, this.model, this.scale); }

  /** A white stroke between two points in model pixels, then the board box-averaged to the model's
   * shape, each 8-bit value quantized by the export's rule (floor(g * K / 256)). */
  stroke(from, to, width) {
    const context = this.board.getContext('2d');
    Object.assign(context, { strokeStyle: '#fff', lineWidth: width * SUPER, lineCap: 'round' });
    context.beginPath();
    context.moveTo(from[0] * SUPER, from[1] * SUPER);
    context.lineTo(to[0] * SUPER, to[1] * SUPER);
    context.stroke();
    const data = context.getImageData(0, 0, this.w * SUPER, this.h * SUPER).data, area = SUPER * SUPER;
    for (let y = 0; y < this.h; y++) for (let x = 0; x < this.w; x++) {
      const sum = [0, 0, 0];
      for (let dy = 0; dy < SUPER; dy++) for (let dx = 0; dx < SUPER; dx++) {
        const i = ((y * SUPER + dy) * this.w * SUPER + x * SUPER + dx) * 4;
        for (let j = 0; j < 3; j++) sum[j] += data[i + j];
      }
      this.setPixel(y * this.w + x, sum.map((s) => Math.round(s / area)));
    }
    this.show();
  }

  setPixel(p, [r, g, b]) {
    const k = this.model.k, plane = this.h * this.w;
    if (this.c === 1) this.levels[p] = quantize(luma(r, g, b), k);
    else [r, g, b].forEach((v, j) => { this.levels[j * plane + p] = quantize(v, k); });
  }

  /** A picture file, read as `densreg --images FILE.png` reads it: grey (PIL's luma) or RGB, then
   * quantized; a picture of another size is scaled by the browser (Python's --resize uses Lanczos). */
  async upload(file) {
    const bitmap = await createImageBitmap(file, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
    const small = new OffscreenCanvas(this.w, this.h), context = small.getContext('2d');
    const resized = bitmap.width !== this.w || bitmap.height !== this.h;
    context.imageSmoothingQuality = 'high';
    context.drawImage(bitmap, 0, 0, this.w, this.h);
    const data = context.getImageData(0, 0, this.w, this.h).data;
    for (let p = 0; p < this.h * this.w; p++) this.setPixel(p, [data[p * 4], data[p * 4 + 1], data[p * 4 + 2]]);
    this.set(this.levels);
    return resized ? `${bitmap.width}x${bitmap.height} scaled to ${this.w}x${this.h} by the browser` : '';
  }
}

// ---- views ------------------------------------------------------------------------------
async function score() {
  const { model, drawing } = page;
  const started = performance.now();
  const { logProb, pixelLogProb } = await model.score(drawing.levels);
  const ms = performance.now() - started;
  const [c, h, w] = model.eventShape, plane = h * w;
  const pixelNll = new Float64Array(plane);
  for (let j = 0; j < c; j++) for (let p = 0; p < plane; p++) pixelNll[p] -= pixelLogProb[j * plane + p];
  const nats = logProb[0], bits = -nats / (model.positions * Math.LN2);
  const top = Math.max(...pixelNll, 1e-9), rgba = new Uint8ClampedArray(plane * 4);
  pixelNll.forEach((v, p) => { rgba.set([...heatColour(v / top), 255], p * 4); });
  paint($('heatmap'), [rgba], 1, model, drawing.scale);
  $('log-prob').textContent = nats.toFixed(3);
  $('log-prob').dataset.value = String(nats);
  $('bits-per-dim').textContent = bits.toFixed(4);
  $('heat-max').textContent = top.toFixed(2);
  $('score-ms').textContent = ms.toFixed(1);
  page.last = { logProb: nats, pixelNll: Array.from(pixelNll), levels: Array.from(drawing.levels), ms };
  page.timings.firstScore ??= performance.now();
  page.timings.score = ms;
  page.scored = (page.scored || 0) + 1;
  return page.last;
}

let scoring = null, again = false;
function rescore() { // one score at a time; a change while one runs scores once more after it
  if (scoring) { again = true; return scoring; }
  scoring = score().finally(() => { scoring = null; if (again) { again = false; rescore(); } });
  return scoring;
}

function wireDrawing() {
  const { drawing } = page, canvas = $('draw');
  let last = null;
  const at = (event) => {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) / box.width * drawing.w, (event.clientY - box.top) / box.height * drawing.h];
  };
  canvas.addEventListener('pointerdown', (event) => {
    canvas.setPointerCapture(event.pointerId);
    last = at(event);
    $('example-index').textContent = 'drawn';
    drawing.stroke(last, last, Number($('brush').value));
    rescore();
  });
  canvas.addEventListener('pointermove', (event) => {
    if (!last) return;
    const point = at(event);
    drawing.stroke(last, point, Number($('brush').value));
    last = point;
    rescore();
  });
  for (const name of ['pointerup', 'pointercancel']) canvas.addEventListener(name, () => { last = null; });
  $('clear').addEventListener('click', () => {
    drawing.set(new Int32Array(drawing.levels.length));
    $('example-index').textContent = 'blank';
    rescore();
  });
  let example = 0;
  $('example').addEventListener('click', () => {
    example = (example + 1) % page.model.golden.images.length;
    showExample(example);
  });
  $('upload').addEventListener('change', async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    $('upload-note').textContent = await drawing.upload(file);
    $('example-index').textContent = file.name;
    await rescore();
  });
}

function showExample(i) {
  page.drawing.set(page.model.golden.images[i].flat(3));
  $('example-index').textContent = `golden image ${i + 1} of ${page.model.golden.images.length}`;
  return rescore();
}

function readInt(id, low, high) {
  const value = Number($(id).value);
  if (!Number.isInteger(value) || value < low || value > high) throw new Error(`${id}: expected ${low}..${high}`);
  return value;
}

async function timed(name, work) {
  const button = $(`${name}-run`), started = performance.now();
  button.disabled = true;
  try {
    const out = await work((done) => {
      $(`${name}-ms`).textContent = `${done} / ${page.model.positions} values`;
      return new Promise((resolve) => setTimeout(resolve, 0));
    });
    page.timings[name] = performance.now() - started;
    $(`${name}-ms`).textContent = `${page.timings[name].toFixed(0)} ms`;
    return out;
  } catch (error) {
    $(`${name}-ms`).textContent = error.message;
    throw error;
  } finally {
    button.disabled = false;
  }
}

async function runComplete() {
  const { model, drawing } = page, [c, , w] = model.eventShape, plane = model.positions / c;
  const kept = readInt('keep', 0, model.raster ? model.eventShape[1] : model.positions);
  const keep = model.raster ? kept * c * w : kept;
  const n = readInt('complete-n', 1, 64), seed = readInt('complete-seed', 0, 2 ** 32 - 1);
  const image = Int32Array.from(drawing.levels);
  const images = await timed('complete', (progress) => model.complete(image, keep, n, seed, progress));
  const original = toRgba(image, model), masked = original.slice();
  for (let p = 0; p < plane; p++) {
    const seen = Array.from({ length: c }, (_, j) => model.order.indexOf(j * plane + p) < keep).every(Boolean);
    if (!seen) masked.set(UNSEEN, p * 4);
  }
  const cells = [original, masked, ...pictures(images, n, model)];
  paint($('completions'), cells, n + 2, model, Math.max(2, Math.floor(112 / model.eventShape[1])));
  page.completion = { keep, n, seed, images: Array.from(images) };
  return page.completion;
}

async function runSample() {
  const { model } = page, n = readInt('sample-n', 1, 256), seed = readInt('sample-seed', 0, 2 ** 32 - 1);
  const images = await timed('sample', (progress) => model.sample(n, seed, progress));
  const scale = Math.max(2, Math.floor(84 / model.eventShape[1]));
  paint($('samples'), pictures(images, n, model), Math.min(n, 8), model, scale);
  page.samples = { n, seed, images: Array.from(images) };
  return page.samples;
}

async function main() {
  setStatus('loading the model…');
  await openModel();
  const { model } = page, [c, h, w] = model.eventShape, m = model.manifest;
  const dataset = (m.dataset || {}).name;
  $('title').textContent = `${m.model.name}${dataset ? ` on ${dataset}` : ''}`;
  $('shape').textContent = `${c}×${h}×${w}, K = ${model.k} levels, ${m.ordering} order, `
    + `export ${m.export_id.slice(0, 8)}`;
  $('keep-label').textContent = model.raster ? 'keep rows' : 'keep values';
  $('keep').max = model.raster ? h : model.positions;
  $('keep').value = model.raster ? Math.floor(h / 2) : Math.floor(model.positions / 2);
  page.drawing = new Drawing(model, $('draw'));
  wireDrawing();
  Object.assign(page, { score: rescore, complete: runComplete, sample: runSample, showExample });
  for (const [name, run] of [['complete', runComplete], ['sample', runSample]])
    $(`${name}-run`).addEventListener('click', () => run().catch((error) => {
      $(`${name}-ms`).textContent = error.message;
    }));
  await showExample(0);
  setStatus(`ready: first score ${(page.timings.firstScore / 1000).toFixed(2)} s after the page began loading`);
}

page.ready = main().catch((error) => {
  setStatus(`error: ${error.message}`);
  page.error = error.message;
  throw error;
});
