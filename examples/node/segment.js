// Segment one image with an end-to-end ONNX in Node.js (onnxruntime-node; PNG/JPEG decoded in pure JS).
//
//   npm ci --prefix examples                       # once (no install scripts: see examples/.npmrc)
//   node examples/node/segment.js model.e2e.onnx photo.jpg mask.png
//   node examples/node/segment.js model.e2e.onnx photos/ masks/      # every .png/.jpg in a folder
//
// The model takes the RGB uint8 image (H, W, 3) as it is and returns `mask` uint8 (H, W): 0/255 for a
// binary model, class ids for a multi-class one, cut by the rule recorded in it (the same rule inference.py
// applies by default). The first JSON line names the model: the file it was made from and that file's SHA-256
// (compare with `sha256sum horse.onnx`), and its rule; when that file sits beside the model and its bytes changed
// since (a retrain and re-export), a warning says so on stderr. Then each mask is written as an 8-bit grey PNG
// and one JSON line describes it. JPEG EXIF orientation is not applied (OpenCV and browsers apply it).
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const ort = require('onnxruntime-node');
const { PNG } = require('pngjs');
const jpeg = require('jpeg-js');
const { readMetadata, describeRule, notEndToEnd } = require('../metadata.js');

function readRgb(path) {
  const data = fs.readFileSync(path);
  let image;
  if (data.subarray(0, 4).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47]))) {
    image = PNG.sync.read(data); // RGBA, 8 bits per channel
  } else if (data[0] === 0xff && data[1] === 0xd8) {
    image = jpeg.decode(data, { useTArray: true, formatAsRGBA: true, maxMemoryUsageInMB: 1024 });
  } else {
    throw new Error(`${path}: not a PNG or JPEG file`);
  }
  const { width, height } = image;
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < width * height * 4; i += 4, j += 3) {
    rgb[j] = image.data[i];
    rgb[j + 1] = image.data[i + 1];
    rgb[j + 2] = image.data[i + 2];
  }
  return { rgb, width, height };
}

function writeGreyPng(path, pixels, width, height) {
  const png = new PNG({ width, height, colorType: 0, inputColorType: 0, bitDepth: 8 });
  png.data = Buffer.from(pixels.buffer, pixels.byteOffset, pixels.byteLength);
  fs.writeFileSync(path, PNG.sync.write(png, { colorType: 0, inputColorType: 0 }));
}

async function segment(session, imagePath, maskPath) {
  const { rgb, width, height } = readRgb(imagePath);
  const start = performance.now();
  const { mask } = await session.run({ image: new ort.Tensor('uint8', rgb, [height, width, 3]) });
  const ms = performance.now() - start;
  writeGreyPng(maskPath, mask.data, width, height);
  const foreground = mask.data.reduce((n, v) => n + (v > 0 ? 1 : 0), 0);
  console.log(JSON.stringify({ image: imagePath, mask: maskPath, width, height, foreground_px: foreground,
                               ms: Math.round(ms * 10) / 10 }));
}

// The model's own line: where it came from and which rule it applies; a warning when its source beside it changed.
function describeModel(modelPath, bytes) {
  const meta = readMetadata(bytes);
  const refusal = notEndToEnd(meta, path.basename(modelPath));
  if (refusal) throw new Error(refusal);
  const source = meta.source || {};
  console.log(JSON.stringify({ model: modelPath, made_from: source.file || null, source_sha256: source.sha256 || null,
                               rule: describeRule(meta.rule) }));
  const beside = source.file ? path.join(path.dirname(modelPath), source.file) : null;
  if (beside && fs.existsSync(beside)) {
    const now = crypto.createHash('sha256').update(fs.readFileSync(beside)).digest('hex');
    if (now !== source.sha256) {
      console.error(`warning: ${path.basename(modelPath)} was made from another ${source.file} (sha256 ` +
                    `${source.sha256.slice(0, 8)} recorded, ${now.slice(0, 8)} now): it gives the old model's ` +
                    'answers; export.py --end-to-end writes it again');
    }
  }
}

async function main() {
  const [modelPath, imagePath, maskPath] = process.argv.slice(2);
  if (!maskPath) {
    console.error('usage: node segment.js MODEL.e2e.onnx IMAGE.(png|jpg)|FOLDER MASK.png|FOLDER');
    process.exit(2);
  }
  const bytes = fs.readFileSync(modelPath);
  describeModel(modelPath, bytes);
  const session = await ort.InferenceSession.create(bytes);
  if (!fs.statSync(imagePath).isDirectory()) {
    await segment(session, imagePath, maskPath);
    return;
  }
  fs.mkdirSync(maskPath, { recursive: true });
  for (const name of fs.readdirSync(imagePath).sort()) {
    if (/\.(png|jpe?g)$/i.test(name)) {
      await segment(session, path.join(imagePath, name), path.join(maskPath, name.replace(/\.[^.]+$/, '.png')));
    }
  }
}

main().catch((error) => {
  console.error(`error: ${error.message}`);
  process.exit(1);
});
