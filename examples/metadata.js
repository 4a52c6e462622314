// segpipe's metadata (ModelProto.metadata_props["segmentation"], a JSON document) read from the ONNX file's bytes,
// in Node.js (require('../metadata.js')) and in the browser (<script src="../metadata.js">: window.segpipeMetadata).
// onnxruntime-node/-web do not expose custom metadata, so this walks the protobuf itself: the top-level fields of
// ModelProto, field 14 (metadata_props) read, the graph (the weights) skipped. The same reader as the Python
// runtime's runtime/lineage.py file_props.
(function (root, factory) {
  if (typeof module === 'object' && module.exports) module.exports = factory();
  else root.segpipeMetadata = factory();
}(typeof self !== 'undefined' ? self : this, function () {
  'use strict';

  function readVarint(bytes, pos) {
    let value = 0;
    for (let shift = 1; pos < bytes.length; shift *= 128) {
      const byte = bytes[pos++];
      value += (byte & 0x7f) * shift;
      if (byte < 0x80) return [value, pos];
    }
    throw new Error('truncated ONNX file');
  }

  // [field number, payload start, payload end] of each length-delimited field in bytes[start, end)
  function lengthFields(bytes, start, end) {
    const found = [];
    let pos = start;
    while (pos < end) {
      let key;
      [key, pos] = readVarint(bytes, pos);
      const wire = key % 8;
      if (wire === 0) [, pos] = readVarint(bytes, pos);
      else if (wire === 1) pos += 8;
      else if (wire === 5) pos += 4;
      else if (wire === 2) {
        let length;
        [length, pos] = readVarint(bytes, pos);
        found.push([Math.floor(key / 8), pos, pos + length]);
        pos += length;
      } else throw new Error(`not an ONNX file (protobuf wire type ${wire})`);
    }
    return found;
  }

  function metadataProps(bytes) {
    const text = new TextDecoder();
    const props = {};
    for (const [field, start, end] of lengthFields(bytes, 0, bytes.length)) {
      if (field !== 14) continue; // StringStringEntryProto: key = 1, value = 2
      const parts = {};
      for (const [number, s, e] of lengthFields(bytes, start, end)) parts[number] = text.decode(bytes.subarray(s, e));
      props[parts[1] || ''] = parts[2] || '';
    }
    return props;
  }

  // The segpipe metadata as an object, or null for a file without it.
  function readMetadata(bytes) {
    const raw = metadataProps(bytes).segmentation;
    return raw === undefined ? null : JSON.parse(raw);
  }

  // One line for the rule a model applies (runtime/rule.py describe_rule, shortened).
  function describeRule(rule) {
    if (!rule) return 'its threshold';
    if (rule.mode === 'adaptive') {
      return `adaptive ${rule.cascade.join(' -> ')} (first level with >= ${rule.min_area} px in all, else empty)`;
    }
    return `threshold ${rule.threshold} (${rule.mode === 'cv' ? 'cross-validated' : 'fixed at export'})`;
  }

  // Why a model cannot run here (not an end-to-end graph), or null.
  function notEndToEnd(meta, name) {
    if (meta && meta.end_to_end) return null;
    return `${name} is not an end-to-end model: it takes a float32 (N, 3, H, W) tensor, not the image. Use the ` +
      '<name>.e2e.onnx that export.py --end-to-end (or python -m exporting.e2e) writes beside it';
  }

  return { metadataProps, readMetadata, describeRule, notEndToEnd };
}));
