/**
 * `cli follow` and `cli result` on real smoke jobs, trained by a real worker
 * on the real services, seen as a person sees them:
 *  - to a pipe: plain lines (phase, step, loss), no terminal control codes, exit 0;
 *    `--json`: one object per change; a cancelled job: exit 1 with the reason;
 *  - the URLs `cli result` prints open with no credentials (the models bucket
 *    is public-read, as a public R2 bucket), while listing it, and reading the
 *    job's dataset, are refused;
 *  - in a terminal: tmux (120x40) runs `cli follow` while the job trains, then
 *    the demo itself (`tools/demo.sh` with DEMO_SKIP_BUILD=1: this suite builds
 *    the smoke image itself, and the worker's dist is built before jest runs);
 *    `tmux capture-pane` shows a live bar with step and loss while it runs, the
 *    result table at the end, no raw JSON log line, and fewer than 30 lines.
 *    The captures are kept under .state/artifacts/tmux/.
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ObjectStorage } from '@stationthis/storage';
import { createHarness, ensureSmokeImage, Harness, REPO_ROOT } from './harness';

const run = promisify(execFile);
const CLI = join(REPO_ROOT, 'apps/training-worker/dist/cli/cli.js');
const ARTIFACTS = join(REPO_ROOT, '.state/artifacts/tmux');
/** The account the demo seeds in this suite's database. */
const DEMO_OWNER = '64b0000000000000000000d5';

/** Runs the CLI; resolves with its exit code and output whatever the code. */
async function cli(h: Harness, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args], { env: h.env, cwd: REPO_ROOT, maxBuffer: 16 << 20 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    if (typeof e.code !== 'number') throw err;
    return { code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

describe('cli follow and cli result (not a terminal)', () => {
  let h: Harness;
  beforeAll(async () => {
    await ensureSmokeImage();
    h = await createHarness('cli-follow');
  }, 900_000); // a first build of the smoke image takes minutes
  afterAll(() => h?.close());

  it('follows a real job to COMPLETED in plain lines, and every URL the result prints opens without credentials', async () => {
    const { owner, wallet } = await h.seedAccount(5000);
    const datasetId = await h.seedDataset(owner);
    const jobId = await h.enqueue({ ownerAccountId: owner, datasetId, walletAddress: wallet, name: 'cli-follow', parameters: { steps: 60 } } as never);
    const following = cli(h, 'follow', jobId, '--interval', '200');
    const { done } = h.startWorker({ WORKER_EXIT_WHEN_IDLE: 'true' });
    const followed = await following;
    await done;

    expect(followed.code).toBe(0);
    expect(followed.stdout.includes('\r') || followed.stdout.includes('\u001b')).toBe(false);
    const lines = followed.stdout.trim().split('\n');
    expect(lines.some((l) => /RUNNING step \d+\/60 loss \d/.test(l))).toBe(true);
    expect(lines.at(-1)).toMatch(new RegExp(`^job ${jobId} COMPLETED after 60/60 steps, final loss \\d`));
    expect(lines.length).toBeLessThan(25); // a tenth of the steps each, plus phases: not one line per poll

    const result = await cli(h, 'result', jobId);
    expect(result.code).toBe(0);
    const modelUrl = /Model +(\S+)/.exec(result.stdout)?.[1] ?? '(no model URL printed)';
    const sampleUrl = /Samples +(\S+)/.exec(result.stdout)?.[1] ?? '(no sample URL printed)';
    expect(result.stdout).toMatch(/Status +COMPLETED/);
    expect(result.stdout).toMatch(/Steps +60\/60/);
    expect(result.stdout).toMatch(/Points +charged \d+, refunded \d+, used \d+/);
    const job = await h.job(jobId);
    expect(result.stdout).toContain(`used ${job.actualCostPoints}`);
    expect(result.stdout).toContain(`Balance      ${await h.balance(owner, wallet)} points`);

    // As anyone with the URL: the model's bytes, and a sample image.
    const storage = h.app.container.resolve(ObjectStorage);
    const model = await fetch(modelUrl);
    expect(model.status).toBe(200);
    const key = new URL(modelUrl).pathname.replace(/^\/models\//, '');
    const chunks: Buffer[] = [];
    for await (const c of (await storage.getObjectStream('models', key)).body) chunks.push(Buffer.from(c as Buffer));
    const served = Buffer.from(await model.arrayBuffer());
    expect(served.length).toBeGreaterThan(0);
    expect(served.equals(Buffer.concat(chunks))).toBe(true);
    const sample = await fetch(sampleUrl);
    expect(sample.status).toBe(200);
    expect(Buffer.from(await sample.arrayBuffer()).subarray(1, 4).toString()).toBe('PNG');
    // Nothing more: no listing of models, no dataset image.
    const endpoint = new URL(modelUrl).origin;
    expect((await fetch(`${endpoint}/models/?list-type=2`)).status).toBe(403);
    const dataset = await h.db.collection('datasets').findOne({});
    const datasetUrl = String((dataset?.['images'] as string[])[0]);
    expect((await fetch(datasetUrl)).status).toBe(403);
  }, 300_000);

  it('--json writes one object per change, and a cancelled job exits 1 with its reason', async () => {
    const { owner, wallet } = await h.seedAccount(5000);
    const datasetId = await h.seedDataset(owner);
    const jobId = await h.enqueue({ ownerAccountId: owner, datasetId, walletAddress: wallet, name: 'cli-follow-cancel' } as never);
    expect((await cli(h, 'cancel', jobId)).code).toBe(0);
    const json = await cli(h, 'follow', jobId, '--json');
    expect(json.code).toBe(1);
    const objs = json.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(objs.at(-1)).toMatchObject({ jobId, status: 'CANCELLED' });
    const plain = await cli(h, 'follow', jobId);
    expect(plain.code).toBe(1);
    expect(plain.stdout.trim().split('\n').at(-1)).toMatch(new RegExp(`^job ${jobId} CANCELLED`));
    const missing = await cli(h, 'follow', '64b0000000000000000000ff');
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('job 64b0000000000000000000ff not found');
  }, 120_000);
});

/** A private tmux server (its own socket), so the test never touches anyone's sessions. */
class Tmux {
  readonly socket = `h5-cli-follow-${process.pid}`;
  constructor(readonly session: string) {}
  private tmux(...args: string[]): string {
    return execFileSync('tmux', ['-L', this.socket, ...args], { encoding: 'utf8' });
  }
  start(script: string): void {
    this.tmux('new-session', '-d', '-s', this.session, '-x', '120', '-y', '40', `bash ${script}; echo TMUX-TEST-DONE; sleep 600`);
  }
  /** What the screen shows now, trailing blank lines dropped. */
  capture(): string {
    return this.tmux('capture-pane', '-p', '-t', this.session).replace(/\n+$/, '');
  }
  async waitFor(pattern: RegExp, timeoutMs: number): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const screen = this.capture();
      if (pattern.test(screen)) return screen;
      if (Date.now() > deadline) throw new Error(`tmux screen never matched ${pattern} within ${timeoutMs} ms; it shows:\n${screen}`);
      await new Promise((r) => setTimeout(r, 150));
    }
  }
  kill(): void {
    try {
      this.tmux('kill-server');
    } catch {
      // already gone
    }
  }
}

/** A script that exports only what the CLI needs (never the whole test environment) and runs `body`. */
function scriptFor(h: Harness, dir: string, body: string): string {
  const keep = ['PATH', 'HOME', 'MONGO_URL', 'MONGO_DB_NAME', 'S3_ENDPOINT', 'S3_ACCESS_KEY_ID', 'S3_SECRET_ACCESS_KEY', 'S3_FORCE_PATH_STYLE', 'TRAINING_ENVIRONMENT', 'IMAGE_MANIFEST_PATH', 'GPU_DEVICES', 'CPU_SLOTS', 'DOCKER_HOST', 'REGISTRY_URL', 'STATIONTHIS_BASE_IMAGE'];
  const q = (v: string) => `'${v.replace(/'/g, `'\\''`)}'`;
  const exports = keep.filter((k) => h.env[k] !== undefined).map((k) => `export ${k}=${q(String(h.env[k]))}`);
  const path = join(dir, `run-${Math.random().toString(36).slice(2)}.sh`);
  writeFileSync(path, [...exports, 'export TERM=xterm-256color', `cd ${q(REPO_ROOT)}`, body, ''].join('\n'), { mode: 0o700 });
  return path;
}

function saveCapture(name: string, screen: string): void {
  mkdirSync(ARTIFACTS, { recursive: true });
  writeFileSync(join(ARTIFACTS, name), `${screen}\n`);
}

/** What a person must see: no raw JSON log line and fewer than 30 lines on the screen. */
function expectReadable(screen: string): void {
  const lines = screen.split('\n');
  expect(lines.filter((l) => /^\s*\{.*"(level|msg|time)"/.test(l))).toEqual([]);
  expect(lines.length).toBeLessThan(30);
}

describe('seen in a terminal (tmux 120x40)', () => {
  let h: Harness;
  let dir: string;
  let tmux: Tmux | undefined;
  beforeAll(async () => {
    await ensureSmokeImage();
    h = await createHarness('cli-follow-tmux');
    dir = await mkdtemp(join(tmpdir(), 'cli-follow-tmux-'));
  }, 900_000);
  afterEach(() => tmux?.kill());
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
    if (h) {
      // What the demo stored outside this suite's job list and key prefix (pass or fail): its job's artifacts and its dataset.
      const storage = h.app.container.resolve(ObjectStorage);
      for (const j of await h.db.collection('trainingJobs').find({ name: 'demo-shapes' }).toArray()) {
        await storage.deletePrefix('models', `training-jobs/${String(j._id)}/`).catch(() => undefined);
      }
      await storage.deletePrefix('datasets', `datasets/${DEMO_OWNER}/`).catch(() => undefined);
    }
    await h?.close();
  });

  it('cli follow draws a live bar with step and loss while the job trains, then the result table', async () => {
    const { owner, wallet } = await h.seedAccount(5000);
    const datasetId = await h.seedDataset(owner);
    // Enough steps that the bar is on screen for several seconds (about 0.1 s a step on an idle 2-core machine).
    const jobId = await h.enqueue({ ownerAccountId: owner, datasetId, walletAddress: wallet, name: 'tmux-follow', parameters: { steps: 150 } } as never);
    tmux = new Tmux('follow');
    tmux.start(scriptFor(h, dir, `node apps/training-worker/dist/cli/cli.js follow ${jobId} --interval 250 && node apps/training-worker/dist/cli/cli.js result ${jobId}`));
    await tmux.waitFor(/QUEUED/, 30_000);
    const { done } = h.startWorker({ WORKER_EXIT_WHEN_IDLE: 'true' });

    const during = await tmux.waitFor(/^RUNNING +\[[#.]+\] +\d+\/150 +loss \d+\.\d+ +ETA \d+:\d\d/m, 240_000);
    saveCapture('cli-follow-during.txt', during);
    for (const line of during.split('\n')) expect(line.length).toBeLessThanOrEqual(120);
    expectReadable(during);

    const after = await tmux.waitFor(/TMUX-TEST-DONE/, 300_000);
    await done;
    saveCapture('cli-follow-after.txt', after);
    expect(after).toMatch(new RegExp(`job ${jobId} COMPLETED after 150/150 steps`));
    expect(after).toMatch(/^Result$/m);
    expect(after).toMatch(/^ {2}Status +COMPLETED$/m);
    expect(after).toMatch(/^ {2}Model +http:\/\/\S+\.safetensors$/m);
    expect(after).toMatch(/^ {2}Points +charged \d+/m);
    expect(after).not.toMatch(/^RUNNING +\[/m); // the live line is cleared, not left half-drawn
    expectReadable(after);
  }, 600_000);

  it('the demo (DEMO_SKIP_BUILD=1) shows stages, a live bar, and the result table in under 30 lines', async () => {
    // The demo seeds its own account and runs its own worker, here in this suite's private database.
    tmux = new Tmux('demo');
    tmux.start(scriptFor(h, dir, `DEMO_SKIP_BUILD=1 DEMO_OWNER=${DEMO_OWNER} bash tools/demo.sh; echo "DEMO-EXIT=$?"`));
    const during = await tmux.waitFor(/^RUNNING +\[[#.]+\] +\d+\/100 +loss \d/m, 240_000);
    saveCapture('demo-during.txt', during);
    expect(during).toMatch(/^\[2\/6\] Local services +ok/m);
    expectReadable(during);

    const after = await tmux.waitFor(/TMUX-TEST-DONE/, 300_000);
    saveCapture('demo-after.txt', after);
    expect(after).toMatch(/DEMO-EXIT=0/);
    expect(after).toMatch(/^Full log: \.state\/demo\/\S+\.log$/m);
    expect(after).toMatch(/^ {2}Status +COMPLETED$/m);
    const modelUrl = /^ {2}Model +(\S+)$/m.exec(after)?.[1] ?? '(no model URL printed)';
    expect(modelUrl).toMatch(/^http:\/\/.+\.safetensors$/);
    expect((await fetch(modelUrl)).status).toBe(200);
    expectReadable(after);
  }, 600_000);
});
