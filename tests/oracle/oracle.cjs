// Compatibility oracle for tests/encoding_compat.rs.
//
// Wraps `@mysten/walrus-wasm` (MystenLabs walrus-core compiled to WASM) in a long-lived
// process so the Rust test pays Node start-up and WASM instantiation once, not per blob.
//
// Protocol: one JSON request per line on stdin,
//   {"n": <shards>, "input": "<blob file>", "output": "<sliver file>", "slivers": true|false}
// and one JSON response per line on stdout, in request order,
//   {"blob_id": "<hex>", "root_hash": "<hex>", "length": <u64>}   or   {"error": "<message>"}.
//
// With "slivers": true the blob is fully encoded and `output` receives, for pair index
// i = 0..n-1, the BCS `SliverData` of the primary sliver, then for i = 0..n-1 the BCS of the
// secondary sliver; each record is prefixed by its byte length as u32 little-endian.
// Otherwise only `compute_metadata` runs (much cheaper: no slivers cross the WASM boundary).
//
// Nothing but responses may go to stdout; diagnostics go to stderr.

'use strict';

const fs = require('node:fs');
const readline = require('node:readline');
const { BlobEncoder } = require('@mysten/walrus-wasm');

// Building an encoder precomputes the Reed–Solomon tables for n, so keep one per n.
const encoders = new Map();

function encoderFor(n) {
	let encoder = encoders.get(n);
	if (encoder === undefined) {
		encoder = new BlobEncoder(n);
		encoders.set(n, encoder);
	}
	return encoder;
}

// `encode` insists on exactly-sized output buffers, so mirror walrus-core's sizing here
// (same arithmetic as the package's own test/encoder.test.ts).
function sourceSymbols(n) {
	const f = Math.floor((n - 1) / 3);
	return { primary: n - 2 * f, secondary: n - f };
}

function uleb128Size(value) {
	let size = 1;
	for (let v = Math.floor(value / 128); v > 0; v = Math.floor(v / 128)) size++;
	return size;
}

// BCS SliverData = Vec<u8> (uleb128 length + bytes) + symbol_size: u16 + index: u16.
function bcsSliverSize(dataLength) {
	return uleb128Size(dataLength) + dataLength + 2 + 2;
}

function bcsBufferSizes(blobLength, n) {
	const k = sourceSymbols(n);
	let symbolSize = Math.floor((Math.max(blobLength, 1) - 1) / (k.primary * k.secondary)) + 1;
	if (symbolSize % 2 === 1) symbolSize += 1; // RS2 symbols are 2-byte aligned.
	return {
		// A primary sliver is a row of the source matrix: one symbol per secondary source symbol.
		primary: bcsSliverSize(k.secondary * symbolSize),
		secondary: bcsSliverSize(k.primary * symbolSize),
	};
}

function toHex(bytes) {
	return Buffer.from(Uint8Array.from(bytes)).toString('hex');
}

// serde_wasm_bindgen renders digests as plain arrays; insist on 32 of them so a change in
// the package's output shape fails loudly here rather than as a confusing mismatch in Rust.
function digestHex(bytes, what) {
	if (bytes === undefined || bytes === null || bytes.length !== 32) {
		throw new Error(`oracle returned an unexpected ${what}: ${JSON.stringify(bytes)}`);
	}
	return toHex(bytes);
}

// u64 may arrive as a number or a bigint depending on serde_wasm_bindgen's settings.
function lengthOf(value) {
	const length = typeof value === 'bigint' ? value : BigInt(value);
	// Render as a bare JSON integer; JSON.stringify cannot handle bigint itself.
	return length.toString();
}

function lengthPrefix(length) {
	const prefix = Buffer.alloc(4);
	prefix.writeUInt32LE(length, 0);
	return prefix;
}

function computeMetadataOnly(encoder, data) {
	const [blobId, rootHash, length] = encoder.compute_metadata(data);
	return {
		blobId: digestHex(blobId, 'blob ID'),
		rootHash: digestHex(rootHash && rootHash.Digest, 'root hash'),
		length: lengthOf(length),
	};
}

function encodeWithSlivers(encoder, n, data, outputPath) {
	const sizes = bcsBufferSizes(data.length, n);
	const primary = Array.from({ length: n }, () => new Uint8Array(sizes.primary));
	const secondary = Array.from({ length: n }, () => new Uint8Array(sizes.secondary));

	// The buffers are indexed by sliver pair, not by shard.
	const [metadata, rootHash] = encoder.encode(data, primary, secondary);

	const chunks = [];
	for (const buffer of [...primary, ...secondary]) {
		chunks.push(lengthPrefix(buffer.length), buffer);
	}
	fs.writeFileSync(outputPath, Buffer.concat(chunks));

	return {
		blobId: digestHex(metadata.blob_id, 'blob ID'),
		rootHash: digestHex(rootHash && rootHash.Digest, 'root hash'),
		length: lengthOf(metadata.metadata.V1.unencoded_length),
	};
}

function handle(line) {
	const request = JSON.parse(line);
	const n = request.n;
	if (!Number.isInteger(n) || n < 1 || n > 0xffff) {
		throw new Error(`invalid n: ${JSON.stringify(n)}`);
	}
	if (typeof request.input !== 'string') throw new Error('missing "input" path');

	const data = fs.readFileSync(request.input);
	const encoder = encoderFor(n);
	if (request.slivers) {
		if (typeof request.output !== 'string') throw new Error('missing "output" path');
		return encodeWithSlivers(encoder, n, data, request.output);
	}
	return computeMetadataOnly(encoder, data);
}

function respond(line) {
	let response;
	try {
		const r = handle(line);
		// `length` is spliced in unquoted so u64 values above 2^53 survive intact.
		response = `{"blob_id":"${r.blobId}","root_hash":"${r.rootHash}","length":${r.length}}`;
	} catch (error) {
		// wasm-bindgen JsErrors and plain strings both end up as a message here; one bad
		// request must not take down the process that all later requests depend on.
		const message = error instanceof Error ? error.message : String(error);
		response = JSON.stringify({ error: message });
	}
	// stdout to a pipe is synchronous on POSIX, so responses stay in request order.
	process.stdout.write(response + '\n');
}

const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
input.on('line', (line) => {
	if (line.trim() !== '') respond(line);
});
