/**
 * Cross-process locks and leases on one host, with plain files (no native
 * dependencies, works on any local filesystem):
 * - a lock is a file created with O_EXCL holding {pid, token}; its holder
 *   refreshes its mtime (heartbeat). It is stale when its pid is gone or the
 *   heartbeat stopped. Breaking a stale lock is itself serialised by a second
 *   O_EXCL file, so two waiters can never both break it and both win.
 * - a lease is a file named <pid>-<token>.lease; it counts while its pid lives.
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export interface LockOptions {
  /**
   * A lock whose heartbeat is older than this (ms) is stale.
   * @default 60000
   */
  staleMs?: number;
  /**
   * Poll interval while waiting, in ms.
   * @default 100
   */
  pollMs?: number;
  /**
   * Give up after this long, in ms.
   * @default undefined (wait forever)
   */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface HeldLock {
  readonly path: string;
  release(): Promise<void>;
}

interface LockContent {
  pid: number;
  host: string;
  token: string;
  createdAt: number;
}

export function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function readLock(p: string): Promise<{ content: LockContent | null; mtimeMs: number } | null> {
  try {
    const [raw, st] = await Promise.all([fsp.readFile(p, 'utf8'), fsp.stat(p)]);
    let content: LockContent | null = null;
    try {
      content = JSON.parse(raw) as LockContent;
    } catch {
      content = null; // half-written: judged by age alone
    }
    return { content, mtimeMs: st.mtimeMs };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

function isStale(l: { content: LockContent | null; mtimeMs: number }, staleMs: number): boolean {
  if (Date.now() - l.mtimeMs > staleMs) return true;
  const c = l.content;
  if (c && c.host === os.hostname() && !pidAlive(c.pid)) return true;
  return false;
}

async function tryCreate(p: string, content: LockContent): Promise<boolean> {
  try {
    const fh = await fsp.open(p, 'wx', 0o644);
    try {
      await fh.writeFile(JSON.stringify(content));
    } finally {
      await fh.close();
    }
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  }
}

/** Removes `p` if it is (still) the stale lock we saw. Serialised by `<p>.break`. */
async function breakIfStale(p: string, seen: { content: LockContent | null; mtimeMs: number }, staleMs: number): Promise<void> {
  const breaker = `${p}.break`;
  const me: LockContent = { pid: process.pid, host: os.hostname(), token: randomBytes(8).toString('hex'), createdAt: Date.now() };
  if (!(await tryCreate(breaker, me))) {
    const b = await readLock(breaker);
    // A breaker left by a crash: remove it after a while, then retry later.
    if (b && isStale(b, Math.min(staleMs, 30_000))) await fsp.rm(breaker, { force: true });
    return;
  }
  try {
    const now = await readLock(p);
    if (now && isStale(now, staleMs) && now.content?.token === seen.content?.token) {
      await fsp.rm(p, { force: true });
    }
  } finally {
    await fsp.rm(breaker, { force: true });
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function heartbeatEvery(p: string, staleMs: number): NodeJS.Timeout {
  const t = setInterval(() => {
    const now = new Date();
    fsp.utimes(p, now, now).catch(() => undefined);
  }, Math.max(50, Math.floor(staleMs / 4)));
  t.unref();
  return t;
}

/** Tries once; returns null when someone else holds a live lock. */
export async function tryLockFile(p: string, opts: LockOptions = {}): Promise<HeldLock | null> {
  const staleMs = opts.staleMs ?? 60_000;
  await fsp.mkdir(path.dirname(p), { recursive: true });
  const me: LockContent = { pid: process.pid, host: os.hostname(), token: randomBytes(8).toString('hex'), createdAt: Date.now() };
  if (!(await tryCreate(p, me))) {
    const seen = await readLock(p);
    if (seen && isStale(seen, staleMs)) await breakIfStale(p, seen, staleMs);
    if (!(await tryCreate(p, me))) return null;
  }
  const hb = heartbeatEvery(p, staleMs);
  let released = false;
  return {
    path: p,
    async release() {
      if (released) return;
      released = true;
      clearInterval(hb);
      const now = await readLock(p);
      if (now?.content?.token === me.token) await fsp.rm(p, { force: true });
    },
  };
}

/** Waits until the lock is ours. */
export async function lockFile(p: string, opts: LockOptions = {}): Promise<HeldLock> {
  const start = Date.now();
  const poll = opts.pollMs ?? 100;
  for (;;) {
    const l = await tryLockFile(p, opts);
    if (l) return l;
    if (opts.signal?.aborted) throw Object.assign(new Error(`Cancelled while waiting for lock ${p}`), { name: 'AbortError' });
    if (opts.timeoutMs !== undefined && Date.now() - start > opts.timeoutMs) {
      const held = await readLock(p);
      throw new Error(`Timed out after ${opts.timeoutMs} ms waiting for lock ${p} (held by pid ${held?.content?.pid ?? '?'}).`);
    }
    await sleep(poll + Math.floor(Math.random() * poll));
  }
}

export interface Lease {
  readonly path: string;
  release(): Promise<void>;
}

export async function createLease(dir: string): Promise<Lease> {
  await fsp.mkdir(dir, { recursive: true });
  const p = path.join(dir, `${process.pid}-${randomBytes(6).toString('hex')}.lease`);
  await fsp.writeFile(p, JSON.stringify({ pid: process.pid, host: os.hostname(), createdAt: Date.now() }), { flag: 'wx' });
  let released = false;
  return {
    path: p,
    async release() {
      if (released) return;
      released = true;
      await fsp.rm(p, { force: true });
    },
  };
}

/** Number of live leases in `dir`; leases of dead processes are removed. */
export async function liveLeases(dir: string): Promise<number> {
  let names: string[];
  try {
    names = await fsp.readdir(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw e;
  }
  let live = 0;
  for (const n of names) {
    const m = /^(\d+)-[0-9a-f]+\.lease$/.exec(n);
    if (!m) continue;
    if (pidAlive(Number(m[1]))) live++;
    else await fsp.rm(path.join(dir, n), { force: true });
  }
  return live;
}
