// Times walrus-core (as @mysten/walrus-wasm 0.3.0, installed in tests/oracle by scripts/setup)
// on one blob and prints one JSON object per operation, in the same shape and with the same
// timing rules as examples/bench_encoding.rs. Run by scripts/bench-encoding.
//
//   node scripts/bench-encoding-oracle.cjs --n N --input FILE [--runs R] [--ops id,encode,decode]
//
// Operations (what walrus-wasm exposes):
//   id     -> blob_id          compute_metadata(data)
//   encode -> encode           encode(data, primary, secondary): every sliver written as BCS
//                              into pre-allocated buffers (allocated once, outside the timing)
//   decode -> decode_recovery  decode(blob_id, len, bcs, out) from the BCS of the n - 2f
//                              primary slivers with the highest indices (the worst case)
//
// Each operation runs once as a warm-up that also sizes the runs (a run repeats the operation
// until it takes at least 50 ms); the reported time is the median over R runs of the time per
// operation. A warm-up longer than one second counts as the first run, so R = 1 means a single
// call for large inputs. MB/s are 10^6 bytes of blob per second. WASM here is single-threaded.

'use strict';

const fs = require('node:fs');
const path = require('node:path');

const MIN_RUN_S = 0.05;
const WARM_UP_COUNTS_S = 1.0;

function usage() {
	process.stderr.write(
		'usage: node bench-encoding-oracle.cjs --n N --input FILE [--runs R] [--ops id,encode,decode]\n',
	);
	process.exit(2);
}

function parseArgs(argv) {
	const args = { n: 1000, input: null, runs: 3, ops: ['id', 'encode', 'decode'] };
	for (let i = 0; i < argv.length; i += 2) {
		const value = argv[i + 1];
		if (value === undefined) usage();
		switch (argv[i]) {
			case '--n':
				args.n = Number.parseInt(value, 10);
				break;
			case '--input':
				args.input = value;
				break;
			case '--runs':
				args.runs = Math.max(1, Number.parseInt(value, 10));
				break;
			case '--ops':
				args.ops = value.split(',');
				break;
			default:
				usage();
		}
	}
	if (!Number.isInteger(args.n) || args.input === null) usage();
	return args;
}

const oracleDir = path.join(__dirname, '..', 'tests', 'oracle');
let BlobEncoder;
try {
	({ BlobEncoder } = require(path.join(oracleDir, 'node_modules', '@mysten', 'walrus-wasm')));
} catch (error) {
	process.stderr.write(
		`bench-encoding-oracle: @mysten/walrus-wasm is not installed in ${oracleDir} ` +
			`(run scripts/setup): ${error.message}\n`,
	);
	process.exit(3);
}

function seconds(start) {
	return Number(process.hrtime.bigint() - start) / 1e9;
}

function time(runs, op) {
	let start = process.hrtime.bigint();
	op();
	const warmUp = seconds(start);
	const iters = Math.max(1, Math.ceil(MIN_RUN_S / Math.max(warmUp, 1e-9)));
	const samples = [];
	if (warmUp >= WARM_UP_COUNTS_S) samples.push(warmUp);
	while (samples.length < runs) {
		start = process.hrtime.bigint();
		for (let i = 0; i < iters; i++) op();
		samples.push(seconds(start) / iters);
	}
	samples.sort((a, b) => a - b);
	return { median: samples[samples.length >> 1], min: samples[0], max: samples[samples.length - 1] };
}

// Sizes of the BCS SliverData buffers encode() insists on (as in the package's own tests).
function bcsSizes(blobLength, n) {
	const f = Math.floor((n - 1) / 3);
	const rows = n - 2 * f;
	const cols = n - f;
	let symbol = Math.floor((Math.max(blobLength, 1) - 1) / (rows * cols)) + 1;
	if (symbol % 2 === 1) symbol += 1;
	const bcs = (len) => {
		let uleb = 1;
		for (let v = Math.floor(len / 128); v > 0; v = Math.floor(v / 128)) uleb++;
		return uleb + len + 4;
	};
	return { rows, primary: bcs(cols * symbol), secondary: bcs(rows * symbol) };
}

function hex(bytes) {
	return Buffer.from(Uint8Array.from(bytes)).toString('hex');
}

function report(args, size, op, bytes, t, extra = {}) {
	const record = {
		impl: 'oracle',
		op,
		n: args.n,
		size,
		runs: args.runs,
		bytes,
		median_s: t.median,
		min_s: t.min,
		max_s: t.max,
		mb_s: bytes / t.median / 1e6,
		...extra,
	};
	process.stdout.write(`${JSON.stringify(record)}\n`);
}

function main() {
	const args = parseArgs(process.argv.slice(2));
	const data = new Uint8Array(fs.readFileSync(args.input));
	const size = data.length;
	const encoder = new BlobEncoder(args.n);
	const sizes = bcsSizes(size, args.n);
	let encoded = null; // { blobId, primary }

	const encodeOnce = () => {
		const primary = Array.from({ length: args.n }, () => new Uint8Array(sizes.primary));
		const secondary = Array.from({ length: args.n }, () => new Uint8Array(sizes.secondary));
		const [metadata] = encoder.encode(data, primary, secondary);
		return { metadata, primary, secondary };
	};

	for (const op of args.ops) {
		if (op === 'id') {
			let blobId;
			const t = time(args.runs, () => {
				blobId = encoder.compute_metadata(data)[0];
			});
			report(args, size, 'blob_id', size, t, { blob_id: hex(blobId) });
		} else if (op === 'encode') {
			const primary = Array.from({ length: args.n }, () => new Uint8Array(sizes.primary));
			const secondary = Array.from({ length: args.n }, () => new Uint8Array(sizes.secondary));
			let metadata;
			const t = time(args.runs, () => {
				[metadata] = encoder.encode(data, primary, secondary);
			});
			encoded = { metadata, primary, secondary };
			report(args, size, 'encode', size, t, { blob_id: hex(metadata.blob_id) });
		} else if (op === 'decode') {
			if (encoded === null) encoded = encodeOnce();
			const bcs = encoded.primary.slice(args.n - sizes.rows);
			const out = new Uint8Array(size);
			const decode = () => encoder.decode(encoded.metadata.blob_id, BigInt(size), bcs, out);
			const t = time(args.runs, decode);
			if (Buffer.compare(Buffer.from(out.buffer, out.byteOffset, size), Buffer.from(data)) !== 0) {
				throw new Error('walrus-wasm decode returned different bytes');
			}
			report(args, size, 'decode_recovery', size, t);
		} else {
			usage();
		}
	}
}

main();
