#!/usr/bin/env node
// Worker benchmark (not a test): N real smoke jobs through one worker process.
//   - orchestration overhead per job = (claim -> COMPLETED) minus container run time
//   - idle gap on the slot between consecutive jobs' containers
//   - worker RSS sampled across all jobs
// Usage: node tools/bench/worker/worker-bench.mjs [--jobs 20] [--steps 10]
// Needs: tools/services up, `npx nx run-many -t build`, the smoke image (tools/demo.sh or the worker tests build it).
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

const require = createRequire(import.meta.url);
require('reflect-metadata');
const root = resolve(new URL('.', import.meta.url).pathname, '../../..');
const { MongoClient, ObjectId } = require('mongodb');
const { TrainingJobRepository, DatasetRepository } = require('@stationthis/db');
const { loadStorageConfig, createS3Client, ObjectStorage } = require('@stationthis/storage');
const { encodePng } = require(join(root, 'apps/training-worker/dist/cli/demo-images.js'));

const { values } = parseArgs({ options: { jobs: { type: 'string', default: '20' }, steps: { type: 'string', default: '10' } } });
const N = Number(values.jobs);
const env = {
  ...process.env,
  MONGO_URL: process.env.MONGO_URL ?? 'mongodb://127.0.0.1:27017',
  MONGO_DB_NAME: `bench_worker_${Date.now().toString(36)}`,
};
const stats = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  return { n: s.length, mean: s.reduce((a, b) => a + b, 0) / Math.max(1, s.length), p50: q(0.5), p95: q(0.95), max: s[s.length - 1] };
};
const fmt = (o) => Object.entries(o).map(([k, v]) => `${k}=${typeof v === 'number' ? v.toFixed(k === 'n' ? 0 : 1) : v}`).join(' ');

const client = await MongoClient.connect(env.MONGO_URL);
const db = client.db(env.MONGO_DB_NAME);
const stateDir = await mkdtemp(join(tmpdir(), 'worker-bench-'));
try {
  const jobs = new TrainingJobRepository(db);
  const datasets = new DatasetRepository(db);
  await jobs.ensureIndexes();
  const storageConfig = loadStorageConfig(env);
  const storage = new ObjectStorage(storageConfig, createS3Client(storageConfig));
  const owner = new ObjectId();
  const wallet = `0x${owner.toHexString().padStart(40, '0')}`;
  await db.collection('credit_ledger').insertOne({ deposit_tx_hash: `bench-${owner}`, master_account_id: owner, depositor_address: wallet, status: 'CONFIRMED', funding_rate_applied: 1, points_credited: 10_000_000, points_remaining: 10_000_000, createdAt: new Date() });
  const urls = [];
  for (let i = 0; i < 4; i++) {
    const key = `bench/${env.MONGO_DB_NAME}/img-${i}.png`;
    await storage.putObject('datasets', key, encodePng(32, 32, new Uint8Array(32 * 32 * 3).map((_, k) => (k * (i + 5)) % 251)), { contentType: 'image/png' });
    urls.push(storage.publicUrl('datasets', key));
  }
  const datasetId = await datasets.create({ name: 'bench', ownerAccountId: owner, images: urls, visibility: 'private', captionSets: [] });
  const ids = [];
  for (let i = 0; i < N; i++) {
    ids.push(await jobs.enqueue({ ownerAccountId: owner.toHexString(), datasetId: String(datasetId), name: `bench-${i}`, baseModel: 'SMOKE', modelType: 'SMOKE', walletAddress: wallet, triggerWord: 'b3nch', environment: 'development', extra: { parameters: { steps: Number(values.steps) } } }));
  }
  console.log(`queued ${N} smoke jobs (steps=${values.steps}) in ${env.MONGO_DB_NAME}; starting one worker`);
  const t0 = Date.now();
  const child = spawn('node', [join(root, 'apps/training-worker/dist/main.js')], {
    env: { ...env, TRAINING_ENVIRONMENT: 'development', WORKER_EXIT_WHEN_IDLE: 'true', WORKER_POLL_MS: '200', WORKER_HTTP_PORT: '0', WORKER_PROGRESS_THROTTLE_MS: '1000', CPU_SLOTS: '1', GPU_DEVICES: 'none', WORKER_STATE_DIR: stateDir, LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const rss = [];
  const sampler = setInterval(() => {
    try {
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      if (m) rss.push({ t: Date.now() - t0, mb: Number(m[1]) / 1024 });
    } catch { /* exited */ }
  }, 500);
  await new Promise((r) => child.once('exit', r));
  clearInterval(sampler);
  const wall = (Date.now() - t0) / 1000;

  const docs = await Promise.all(ids.map((id) => jobs.findById(id)));
  const done = docs.filter((d) => d.status === 'COMPLETED');
  const overhead = [];
  const container = [];
  for (const d of done) {
    const runs = d.pipeline?.containerRuns ?? [];
    const c = runs.reduce((a, r) => a + (new Date(r.endedAt) - new Date(r.startedAt)), 0);
    container.push(c / 1000);
    overhead.push((new Date(d.completedAt ?? d.finishedAt) - new Date(d.startedAt) - c) / 1000);
  }
  const spans = done.map((d) => d.pipeline.containerRuns).filter((r) => r?.length).map((r) => ({ s: +new Date(r[0].startedAt), e: +new Date(r[r.length - 1].endedAt) })).sort((a, b) => a.s - b.s);
  const gaps = spans.slice(1).map((sp, i) => (sp.s - spans[i].e) / 1000);
  console.log(`\njobs completed: ${done.length}/${N} in ${wall.toFixed(1)} s`);
  console.log(`container run time (s):        ${fmt(stats(container))}`);
  console.log(`orchestration overhead (s):    ${fmt(stats(overhead))}`);
  console.log(`slot idle gap between jobs (s): ${fmt(stats(gaps))}`);
  if (rss.length) {
    const first = rss.slice(0, Math.max(1, Math.floor(rss.length / 10)));
    const last = rss.slice(-Math.max(1, Math.floor(rss.length / 10)));
    const avg = (xs) => xs.reduce((a, b) => a + b.mb, 0) / xs.length;
    console.log(`worker RSS (MiB): min=${Math.min(...rss.map((r) => r.mb)).toFixed(1)} max=${Math.max(...rss.map((r) => r.mb)).toFixed(1)} first10%=${avg(first).toFixed(1)} last10%=${avg(last).toFixed(1)} samples=${rss.length}`);
  }
} finally {
  await db.dropDatabase().catch(() => undefined);
  await client.close();
  await rm(stateDir, { recursive: true, force: true });
}
