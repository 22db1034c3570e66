#!/usr/bin/env node
// Claim benchmark: TrainingJobRepository.claimNext vs Agenda v6 on the same server.
//
//   npx tsc -p libs/db/tsconfig.lib.json && node tools/bench/claim/claim-bench.mjs
//
// Env: MONGO_URL (default mongodb://127.0.0.1:27017), BENCH_JOBS (10000 queued jobs per run),
// BENCH_SECONDS (time budget per run, default 45), BENCH_CLAIMERS (default "1,4,8").
// Each run gets a fresh database with BENCH_JOBS queued jobs; each claimer is its own
// MongoClient + repository (as separate worker processes would be). A run stops when the
// queue is empty or the budget is spent; throughput is claims per second over the run.
// Agenda runs one Agenda instance per claimer (maxConcurrency 1, processEvery 100 ms) with
// a no-op handler over the same number of pre-inserted jobs, and we count completions and
// jobs run more than once. Not a test: it prints a table and exits.
import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';
import { Agenda } from 'agenda';
import { MongoBackend } from '@agendajs/mongo-backend';

const require = createRequire(import.meta.url);
require('reflect-metadata');
const { MongoClient, ObjectId } = require('mongodb');
const { TrainingJobRepository } = require('../../../libs/db/dist/index.js');

const MONGO_URL = process.env.MONGO_URL ?? 'mongodb://127.0.0.1:27017';
const JOBS = Number(process.env.BENCH_JOBS ?? 10_000);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 45);
const CLAIMERS = (process.env.BENCH_CLAIMERS ?? '1,4,8').split(',').map(Number);

const dbName = (tag) => `bench_${tag}_${randomBytes(3).toString('hex')}`;
const pct = (sorted, p) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] : NaN);
const mostCommon = (xs) => {
  const counts = new Map();
  for (const x of xs) counts.set(x.slice(-60), (counts.get(x.slice(-60)) ?? 0) + 1);
  return [...counts].sort((a, b) => b[1] - a[1])[0][0];
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const fmt = (n, d = 1) => (Number.isFinite(n) ? n.toFixed(d) : '-');

async function insertInBatches(col, docs) {
  for (let i = 0; i < docs.length; i += 1000) await col.insertMany(docs.slice(i, i + 1000), { ordered: false });
}

async function benchOurs(claimers) {
  const admin = await MongoClient.connect(MONGO_URL);
  const db = admin.db(dbName('ours'));
  try {
    await new TrainingJobRepository(db).ensureIndexes();
    const now = Date.now();
    await insertInBatches(
      db.collection('trainingJobs'),
      Array.from({ length: JOBS }, (_, i) => ({
        userId: 'bench', ownerAccountId: 'bench', name: `job-${i}`, datasetId: new ObjectId().toHexString(),
        baseModel: 'FLUX', environment: 'production', status: 'QUEUED', progress: 0, priority: 0, attempts: 0,
        maxAttempts: 3, createdAt: new Date(now + i), updatedAt: new Date(now + i),
      })),
    );
    const clients = await Promise.all(Array.from({ length: claimers }, () => MongoClient.connect(MONGO_URL)));
    const latencies = [];
    const seen = new Set();
    let duplicates = 0;
    const deadline = Date.now() + SECONDS * 1000;
    const t0 = process.hrtime.bigint();
    await Promise.all(
      clients.map(async (client, w) => {
        const repo = new TrainingJobRepository(client.db(db.databaseName));
        while (Date.now() < deadline) {
          const a = process.hrtime.bigint();
          const got = await repo.claimNext({ workerId: `w${w}`, environment: 'production', leaseMs: 600_000 });
          if (!got) return;
          latencies.push(Number(process.hrtime.bigint() - a) / 1e6);
          if (seen.has(got.lease.jobId)) duplicates++;
          seen.add(got.lease.jobId);
        }
      }),
    );
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    await Promise.all(clients.map((c) => c.close()));
    latencies.sort((x, y) => x - y);
    return { claims: latencies.length, seconds, perSec: latencies.length / seconds, p50: pct(latencies, 50), p99: pct(latencies, 99), duplicates };
  } finally {
    await db.dropDatabase().catch(() => undefined);
    await admin.close();
  }
}

async function benchAgenda(claimers) {
  const admin = await MongoClient.connect(MONGO_URL);
  const db = admin.db(dbName('agenda'));
  const agendas = [];
  const clients = [];
  try {
    const now = new Date(Date.now() - 1000);
    await insertInBatches(
      db.collection('agendaJobs'),
      Array.from({ length: JOBS }, () => ({
        name: 'noop', data: {}, type: 'normal', priority: 0, nextRunAt: now, lockedAt: null, lastRunAt: null,
        lastFinishedAt: null, failedAt: null, failCount: null, failReason: null, repeatInterval: null,
        disabled: null, progress: null, lastModifiedBy: null,
      })),
    );
    const runs = new Map();
    const errors = [];
    const started = [];
    let done = 0;
    for (let w = 0; w < claimers; w++) {
      const client = await MongoClient.connect(MONGO_URL);
      clients.push(client);
      const agenda = new Agenda({
        backend: new MongoBackend({ mongo: client.db(db.databaseName) }),
        processEvery: 100,
        maxConcurrency: 1,
        defaultConcurrency: 1,
        name: `bench-${w}`,
      });
      agenda.define('noop', async (job) => {
        const id = job.attrs._id.toString();
        started.push(process.hrtime.bigint());
        if (!runs.has(id)) done++;
        runs.set(id, (runs.get(id) ?? 0) + 1);
      });
      agenda.on('error', (err) => errors.push(String(err?.message ?? err).slice(0, 120)));
      agendas.push(agenda);
    }
    const t0 = process.hrtime.bigint();
    const deadline = Date.now() + SECONDS * 1000;
    // start() can stall on this server (SQLITE_BUSY on its lock queries), so it only gets the budget too
    const startAll = Promise.all(agendas.map((a) => a.start())).catch((err) => errors.push(String(err?.message ?? err)));
    await Promise.race([startAll, sleep(SECONDS * 1000)]);
    while (Date.now() < deadline && done < JOBS) await sleep(100);
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    // latency between consecutive job starts of the whole fleet, the nearest analogue of a claim
    const gaps = [];
    for (let i = 1; i < started.length; i++) gaps.push(Number(started[i] - started[i - 1]) / 1e6 * claimers);
    gaps.sort((x, y) => x - y);
    const duplicates = [...runs.values()].filter((n) => n > 1).length;
    return { claims: done, seconds, perSec: done / seconds, p50: pct(gaps, 50), p99: pct(gaps, 99), duplicates, errors };
  } finally {
    // Close every other connection before dropping: FerretDB v1 crashed (SIGBUS in the SQLite WAL)
    // when a database was dropped while other connections still had it open.
    await Promise.race([Promise.all(agendas.map((a) => a.stop().catch(() => undefined))), sleep(15_000)]);
    await Promise.all(clients.map((c) => c.close(true).catch(() => undefined)));
    await db.dropDatabase().catch(() => undefined);
    await admin.close();
  }
}

const info = await (async () => {
  const c = await MongoClient.connect(MONGO_URL);
  const b = await c.db('admin').command({ buildInfo: 1 });
  await c.close();
  return `${'ferretdbVersion' in b ? 'FerretDB (reports MongoDB ' + b.version + ')' : 'MongoDB ' + b.version}`;
})();
console.log(`claim bench: ${JOBS} queued jobs per run, budget ${SECONDS}s per run, server ${info}`);
console.log('system      claimers  claims  seconds  claims/s  p50 ms  p99 ms  dup');
const rows = [];
for (const n of CLAIMERS) {
  const ours = await benchOurs(n);
  console.log(`stationthis ${String(n).padStart(8)}  ${String(ours.claims).padStart(6)}  ${fmt(ours.seconds).padStart(7)}  ${fmt(ours.perSec).padStart(8)}  ${fmt(ours.p50).padStart(6)}  ${fmt(ours.p99).padStart(6)}  ${ours.duplicates}`);
  const ag = await benchAgenda(n);
  console.log(`agenda-v6   ${String(n).padStart(8)}  ${String(ag.claims).padStart(6)}  ${fmt(ag.seconds).padStart(7)}  ${fmt(ag.perSec).padStart(8)}  ${fmt(ag.p50).padStart(6)}  ${fmt(ag.p99).padStart(6)}  ${ag.duplicates}  (${ag.errors.length} errors${ag.errors.length ? ', most common: ' + mostCommon(ag.errors) : ''})`);
  rows.push({ n, ratio: ours.perSec / ag.perSec });
}
for (const r of rows) {
  console.log(`throughput ratio stationthis/agenda at ${r.n} claimer(s): ${Number.isFinite(r.ratio) ? fmt(r.ratio, 2) + 'x' : 'n/a (agenda completed nothing)'}`);
}
process.exit(0);
