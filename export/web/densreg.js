// An export folder in onnxruntime-web: the JavaScript twin of densreg's Python runtime
// (export/runtime.py) for categorical models. Scoring runs conditionals.onnx; sampling and
// completion run step.onnx once per position with the folder's noise and draw rules:
//   noise = numpy.random.default_rng(seed).random((n, D))   (rng.js: numpy's PCG64, bit for bit)
//   value = number of entries of cumsum(softmax(float64(logits))) below the noise, capped at K-1
// so the same seed gives the images `densreg sample` and `densreg complete` give.

import { Generator } from './rng.js';

/** The backend to use: "webgpu" where the browser hands out an adapter, else "wasm";
 * `wanted` ("webgpu" or "wasm", e.g. from ?backend=) forces one. */
export async function pickBackend(wanted) {
  if (wanted === 'wasm') return { backend: 'wasm', why: 'asked for' };
  if (!('gpu' in navigator)) return { backend: 'wasm', why: 'this browser has no WebGPU' };
  try {
    if (await navigator.gpu.requestAdapter()) return { backend: 'webgpu', why: 'WebGPU adapter found' };
  } catch (error) { /* an adapter request that throws: no usable GPU */ }
  return { backend: 'wasm', why: 'WebGPU gave no adapter' };
}

/** onnxruntime-web's build for a backend, from the site's ort/ folder (no network). */
export async function loadOrt(backend, base) {
  const ort = await import(new URL(backend === 'webgpu' ? 'ort/ort.webgpu.min.mjs' : 'ort/ort.wasm.min.mjs', base));
  ort.env.wasm.wasmPaths = new URL('ort/', base).href;
  ort.env.logLevel = 'error'; // not the warning that shape ops run on the CPU beside WebGPU
  // threads need cross-origin isolation (SharedArrayBuffer), which a plain static server does not give
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  return ort;
}

const TYPED = { float32: Float32Array, float64: Float64Array, int64: BigInt64Array, int32: Int32Array,
  float16: Uint16Array, uint8: Uint8Array };

/** An array stored in the manifest as {dtype, shape, data: base64 of little-endian bytes}. */
export function decodeArray(item) {
  const bytes = Uint8Array.from(atob(item.data), (c) => c.charCodeAt(0));
  const Type = TYPED[item.dtype];
  if (!Type) throw new Error(`unsupported state dtype ${item.dtype}`);
  return { dtype: item.dtype, shape: item.shape, data: new Type(bytes.buffer) };
}

/** An array's one-row value repeated n times along its batch axis (the runtime's tile_initial). */
export function tile(array, axis, n) {
  if (axis === null || axis === undefined) return array;
  const shape = array.shape.slice();
  const outer = shape.slice(0, axis).reduce((a, b) => a * b, 1);
  const inner = shape.slice(axis + 1).reduce((a, b) => a * b, 1);
  const data = new array.data.constructor(outer * n * inner);
  for (let o = 0; o < outer; o++)
    for (let i = 0; i < n; i++) data.set(array.data.subarray(o * inner, (o + 1) * inner), (o * n + i) * inner);
  shape[axis] = n;
  return { dtype: array.dtype, shape, data };
}

/** The inverse-CDF draw of one value (the family's draw_numpy, float64 arithmetic). */
export function draw(logits, offset, k, u) {
  if (k === 2) {
    const l0 = logits[offset], l1 = logits[offset + 1], top = Math.max(l0, l1);
    const e0 = Math.exp(l0 - top), e1 = Math.exp(l1 - top);
    return e0 / (e0 + e1) < u ? 1 : 0;
  }
  let top = -Infinity;
  for (let j = 0; j < k; j++) top = Math.max(top, logits[offset + j]);
  const probs = new Float64Array(k);
  let total = 0;
  for (let j = 0; j < k; j++) { probs[j] = Math.exp(logits[offset + j] - top); total += probs[j]; }
  let cdf = 0, count = 0;
  for (let j = 0; j < k; j++) { cdf += probs[j] / total; if (cdf < u) count++; }
  return Math.min(count, k - 1);
}

/** 8-bit grey values -> K equal-width bins: floor(g * K / 256) (registry.datasets.quantize). */
export const quantize = (grey, k) => Math.floor((grey * k) / 256);

/** PIL's convert("L") of an 8-bit RGB pixel (ITU-R 601-2 luma, PIL's integer rounding). */
export const luma = (r, g, b) => (r * 19595 + g * 38470 + b * 7471 + 0x8000) >>> 16;

/** Level v of K -> 8-bit for pictures, as registry.datasets.levels_to_8bit (read back exactly by quantize). */
export function levelTo8bit(v, k) {
  const x = v * (255 / (k - 1));
  let linear = Math.round(x);
  if (linear - x === 0.5 && linear % 2 !== 0) linear -= 1; // numpy rounds half to even
  const lowest = Math.ceil((v * 256) / k), highest = Math.ceil(((v + 1) * 256) / k) - 1;
  return Math.min(Math.max(linear, lowest), highest);
}

export class ExportedModel {
  /** An export folder at `url` (its manifest.json, conditionals.onnx, step.onnx, weights.bin). */
  static async open(ort, url, backend) {
    const get = async (name) => {
      const response = await fetch(new URL(name, url));
      if (!response.ok) throw new Error(`${name}: HTTP ${response.status}`);
      return response;
    };
    const manifest = await (await get('manifest.json')).json();
    if ((manifest.family || {}).name !== 'categorical') throw new Error('the page runs categorical models only');
    const weights = new Uint8Array(await (await get('weights.bin')).arrayBuffer());
    const options = { executionProviders: [backend], graphOptimizationLevel: 'all', logSeverityLevel: 3,
      externalData: [{ path: 'weights.bin', data: weights }] };
    const graphs = await Promise.all(['conditionals.onnx', 'step.onnx'].map(
      async (name) => new Uint8Array(await (await get(name)).arrayBuffer())));
    // one after the other: the WebGPU backend refuses a session while another is being created
    const conditionals = await ort.InferenceSession.create(graphs[0], options);
    const step = await ort.InferenceSession.create(graphs[1], options);
    const golden = await (await get('golden.json')).json();
    return new ExportedModel(ort, manifest, conditionals, step, golden);
  }

  constructor(ort, manifest, conditionals, step, golden) {
    Object.assign(this, { ort, manifest, conditionals, step, golden });
    this.eventShape = manifest.event_shape;
    this.k = manifest.num_categories;
    this.positions = this.eventShape.reduce((a, b) => a * b, 1);
    this.order = Int32Array.from(manifest.order);
    this.raster = this.order.every((p, d) => p === d);
    this.states = manifest.state.map((spec) => ({ ...spec, one: decodeArray(spec.initial) }));
    this.stepInputs = new Set(step.inputNames);
    // step.onnx takes a position per row, int64 (B,), except in exports of densreg 0.3.0 (a scalar)
    const stepGraph = (manifest.graphs || {})['step.onnx'] || { inputs: [] };
    const position = stepGraph.inputs.find((i) => i.name === 'position');
    this.positionPerRow = Boolean(position && position.shape.length === 1);
  }

  tensor(array) {
    return new this.ort.Tensor(array.dtype, array.data, array.shape);
  }

  /** Exact log p(x) in nats and log p of every value (image layout) of images given as one flat
   * Int32Array of B*C*H*W levels: {logProb: Float32Array(B), pixelLogProb: Float32Array(B*C*H*W)}. */
  async score(levels) {
    const count = levels.length / this.positions;
    const images = { dtype: 'int64', shape: [count, ...this.eventShape], data: BigInt64Array.from(levels, BigInt) };
    const out = await this.conditionals.run({ images: this.tensor(images) }, ['log_prob', 'pixel_log_prob']);
    return { logProb: out.log_prob.data, pixelLogProb: out.pixel_log_prob.data };
  }

  /** Noise of the folder's rule: default_rng(seed).random((n, D)), row-major. */
  noise(n, seed) {
    return new Generator(seed).random(n * this.positions);
  }

  /** The ancestral step loop (runtime.step_loop; app.completion.complete when keep > 0): n rows, the first
   * `keep` values of each taken from `kept` (n*D levels in generation order), the rest drawn by `noise`
   * (n*D uniforms). Returns images, n*C*H*W levels in image layout. `progress(d)` after each step. */
  async stepLoop(n, noise, keep = 0, kept = null, progress = null) {
    const d = this.positions, k = this.k;
    const feed = {};
    for (const spec of this.states)
      if (this.stepInputs.has(spec.name)) feed[spec.name] = this.tensor(tile(spec.one, spec.batch_axis, n));
    const values = new Int32Array(n * d);
    let value = new BigInt64Array(n);
    for (let position = 0; position < d; position++) {
      if (this.stepInputs.has('value')) feed.value = new this.ort.Tensor('int64', value, [n]);
      if (this.stepInputs.has('position'))
        feed.position = this.positionPerRow
          ? new this.ort.Tensor('int64', new BigInt64Array(n).fill(BigInt(position)), [n])
          : new this.ort.Tensor('int64', BigInt64Array.of(BigInt(position)), []);
      const out = await this.step.run(feed);
      for (const spec of this.states) if (spec.name in feed) feed[spec.name] = out[spec.output];
      const logits = out.logits.data;
      value = new BigInt64Array(n);
      for (let row = 0; row < n; row++) {
        const i = row * d + position;
        values[i] = position < keep ? kept[i] : draw(logits, row * k, k, noise[i]);
        value[row] = BigInt(values[i]);
      }
      if (progress && position % 32 === 31) await progress(position + 1);
    }
    const images = new Int32Array(n * d);
    for (let row = 0; row < n; row++)
      for (let position = 0; position < d; position++)
        images[row * d + this.order[position]] = values[row * d + position];
    return images;
  }

  /** `densreg sample -n N --seed S` on the export: N images, flat N*C*H*W levels. */
  sample(n, seed, progress = null) {
    return this.stepLoop(n, this.noise(n, seed), 0, null, progress);
  }

  /** `densreg complete --keep KEEP -n N --seed S` on one image (C*H*W levels): N completions. */
  complete(image, keep, n, seed, progress = null) {
    const d = this.positions;
    if (!(keep >= 0 && keep <= d)) throw new Error(`keep must lie in 0..${d}, got ${keep}`);
    const kept = new Int32Array(n * d);
    for (let row = 0; row < n; row++)
      for (let position = 0; position < d; position++) kept[row * d + position] = image[this.order[position]];
    return this.stepLoop(n, this.noise(n, seed), keep, kept, progress);
  }
}
