#!/usr/bin/env node
/**
 * Storage benchmark: upload and download of one file (default 1 GiB) against
 * the local S3 server, with @stationthis/storage (libs/storage/dist) and the
 * AWS CLI side by side in the same run, alternating, N rounds each.
 *
 *   node tools/bench/storage/bench.mjs [--size-mib 1024] [--rounds 2] [--aws path/to/aws]
 *
 * Prefer tools/bench/storage/run.sh, which builds the library and installs the
 * AWS CLI into a venv first. Reads S3_ENDPOINT / S3_ACCESS_KEY_ID /
 * S3_SECRET_ACCESS_KEY (local defaults otherwise).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream, promises as fsp } from 'node:fs';
import { once } from 'node:events';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../../..');
const require = createRequire(path.join(repo, 'package.json'));
require('reflect-metadata');
const lib = require(path.join(repo, 'libs/storage/dist/index.js'));

const args = process.argv.slice(2);
const arg = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const MiB = 1024 * 1024;
const sizeMiB = Number(arg('size-mib', '1024'));
const rounds = Number(arg('rounds', '4'));
const aws = arg('aws', process.env.AWS_CLI ?? 'aws');
const bytes = sizeMiB * MiB;

const config = lib.loadStorageConfig(process.env);
if (config.mode !== 'local') {
  console.error('This benchmark is for the local S3 server (set S3_ENDPOINT, or unset R2_ACCOUNT_ID).');
  process.exit(2);
}
const s3 = lib.createS3Client(config);
const storage = new lib.ObjectStorage(config, s3);
const uploader = new lib.ModelUploader(storage);
const bucket = config.buckets.models.bucket;
const prefix = `bench/storage-${Date.now()}-${randomBytes(3).toString('hex')}/`;
const work = await fsp.mkdtemp(path.join(os.tmpdir(), 'st-bench-'));

const awsEnv = {
  ...process.env,
  AWS_ACCESS_KEY_ID: config.credentials.accessKeyId,
  AWS_SECRET_ACCESS_KEY: config.credentials.secretAccessKey,
  AWS_DEFAULT_REGION: config.region,
  AWS_CONFIG_FILE: path.join(work, 'aws-config'),
  AWS_SHARED_CREDENTIALS_FILE: path.join(work, 'aws-credentials'),
  AWS_REQUEST_CHECKSUM_CALCULATION: 'when_required',
  AWS_RESPONSE_CHECKSUM_VALIDATION: 'when_required',
};
// Path-style addressing, like our client; CLI transfer settings left at their defaults.
await fsp.writeFile(awsEnv.AWS_CONFIG_FILE, '[default]\ns3 =\n  addressing_style = path\n');

// CPU seconds are reported too: on a shared machine they are steadier than wall time.
const haveTime = spawnSync('/usr/bin/time', ['-f', '%U', 'true']).status === 0;
let lastChildCpu = 0;
function runAws(argv) {
  const cmd = [aws, '--endpoint-url', config.endpoint, '--only-show-errors', ...argv];
  const r = haveTime
    ? spawnSync('/usr/bin/time', ['-f', 'CPU %U %S', ...cmd], { env: awsEnv, encoding: 'utf8', stdio: ['ignore', 'inherit', 'pipe'] })
    : spawnSync(cmd[0], cmd.slice(1), { env: awsEnv, encoding: 'utf8', stdio: ['ignore', 'inherit', 'pipe'] });
  const m = /CPU ([\d.]+) ([\d.]+)\s*$/.exec(r.stderr ?? '');
  lastChildCpu = m ? Number(m[1]) + Number(m[2]) : NaN;
  if (r.status !== 0) throw new Error(`aws ${argv.join(' ')} failed with exit code ${r.status}: ${r.stderr}`);
}

async function writeFile(file, n) {
  const h = createHash('sha256');
  const block = randomBytes(MiB);
  const out = createWriteStream(file);
  for (let i = 0, left = n; left > 0; i++) {
    const c = Buffer.from(block.subarray(0, Math.min(left, MiB)));
    c.writeUInt32LE(i, 0);
    h.update(c);
    if (!out.write(c)) await once(out, 'drain');
    left -= c.length;
  }
  out.end();
  await once(out, 'finish');
  return h.digest('hex');
}

async function timed(name, fn) {
  const c = process.cpuUsage();
  const t = process.hrtime.bigint();
  await fn();
  const wall = Number(process.hrtime.bigint() - t) / 1e9;
  const d = process.cpuUsage(c);
  const cpuS = name.startsWith('aws') ? lastChildCpu : (d.user + d.system) / 1e6;
  return { wall, cpuS };
}

const mbps = (s) => bytes / MiB / s;
const fmt = (s) => `${mbps(s).toFixed(1).padStart(7)} MiB/s (${s.toFixed(2)} s)`;
const median = (xs) => {
  const v = [...xs].sort((a, b) => a - b);
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
};

try {
  const awsVersion = execFileSync(aws, ['--version'], { env: awsEnv, encoding: 'utf8' }).trim();
  const src = path.join(work, 'src.bin');
  console.log(`storage bench: ${sizeMiB} MiB, ${rounds} round(s), endpoint ${config.endpoint}, bucket ${bucket}`);
  console.log(`reference: ${awsVersion}; node ${process.version}; ${os.cpus().length} CPUs`);
  const sha = await writeFile(src, bytes);
  const names = ['oursUp', 'oursUpRaw', 'awsUp', 'oursDown', 'oursDown4', 'awsDown'];
  const t = Object.fromEntries(names.map((n) => [n, []]));
  const cpu = Object.fromEntries(names.map((n) => [n, []]));
  for (let r = 1; r <= rounds; r++) {
    const ourKey = `${prefix}ours-${r}.bin`;
    const awsKey = `${prefix}aws-${r}.bin`;
    // Alternate who goes first, so drift on a shared machine hits both sides.
    const ups = [
      ['oursUp', () => uploader.upload({ filePath: src, bucketAlias: 'models', key: ourKey, contentType: 'application/octet-stream' }).then((u) => {
        if (u.sha256 !== sha) throw new Error('sha256 mismatch on our upload');
      })],
      ['awsUp', () => runAws(['s3', 'cp', src, `s3://${bucket}/${awsKey}`])],
      // The same upload without our sha256 (what the AWS CLI does): the transfer path alone.
      ['oursUpRaw', () => storage.uploadFile('models', `${ourKey}.raw`, src, { contentType: 'application/octet-stream' })],
    ];
    const downs = [
      ['oursDown', () => storage.downloadToFile('models', awsKey, path.join(work, 'ours.out'))],
      ['oursDown4', () => storage.downloadToFile('models', awsKey, path.join(work, 'ours4.out'), { concurrency: 4, chunkBytes: 16 * MiB })],
      ['awsDown', () => runAws(['s3', 'cp', `s3://${bucket}/${ourKey}`, path.join(work, 'aws.out')])],
    ];
    if (r % 2 === 0) {
      ups.reverse();
      downs.reverse();
    }
    for (const [name, fn] of [...ups, ...downs]) {
      const { wall, cpuS } = await timed(name, fn);
      t[name].push(wall);
      cpu[name].push(cpuS);
      console.log(`  round ${r} ${name.padEnd(9)} ${fmt(wall)}  cpu ${cpuS.toFixed(2)} s`);
    }
    for (const f of ['ours.out', 'ours4.out', 'aws.out']) {
      const got = await lib.sha256File(path.join(work, f));
      if (got.sha256 !== sha) throw new Error(`${f}: downloaded data differs`);
      await fsp.rm(path.join(work, f));
    }
  }
  const up = [median(t.oursUp), median(t.awsUp)];
  const down = [median(t.oursDown), median(t.awsDown)];
  const down4 = median(t.oursDown4);
  console.log('\nmedian throughput          @stationthis/storage      aws-cli                   ours/aws');
  const upRaw = median(t.oursUpRaw);
  console.log(`upload   (${sizeMiB} MiB)        ${fmt(up[0])}   ${fmt(up[1])}   ${(up[1] / up[0]).toFixed(2)}x   (ModelUploader: + sha256/AutoV2)`);
  console.log(`upload   (${sizeMiB} MiB)        ${fmt(upRaw)}   ${fmt(up[1])}   ${(up[1] / upRaw).toFixed(2)}x   (uploadFile, no hash, like the CLI)`);
  console.log(`download (${sizeMiB} MiB)        ${fmt(down[0])}   ${fmt(down[1])}   ${(down[1] / down[0]).toFixed(2)}x   (one stream)`);
  console.log(`download (${sizeMiB} MiB)        ${fmt(down4)}   ${fmt(down[1])}   ${(down[1] / down4).toFixed(2)}x   (4 x 16 MiB ranges, as WeightCache uses)`);
  const c = (k) => median(cpu[k]).toFixed(2);
  console.log(`median CPU seconds: upload ours ${c('oursUp')} (no hash ${c('oursUpRaw')}) / aws ${c('awsUp')}; download ours ${c('oursDown')} (4 ranges ${c('oursDown4')}) / aws ${c('awsDown')} (aws includes ~0.4 s Python start-up)`);
  console.log('(ours/aws = our throughput / AWS CLI throughput; our upload also computes sha256 + AutoV2; target >= 0.90x)');
} finally {
  await storage.deletePrefix('models', prefix).catch(() => undefined);
  await storage.abortIncompleteUploads('models', prefix).catch(() => undefined);
  await fsp.rm(work, { recursive: true, force: true });
  s3.destroy();
}
