/**
 * Test helpers: real MinIO config, a loopback TCP proxy in front of it that a
 * test can cut (a real network failure between a real client and server),
 * and small local HTTP servers.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream, promises as fsp } from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { once } from 'node:events';
import { serviceEnv, uniquePrefix } from '../../../tools/testing/support';

export { uniquePrefix };
import { createS3Client, loadStorageConfig, ObjectStorage, type R2Config, type S3ClientOptions } from '../src';
import { jpegOf, pngOf, webpOf } from '../src/testing';

export function localConfig(over: Partial<R2Config> = {}, env: NodeJS.ProcessEnv = {}): R2Config {
  const s = serviceEnv();
  const base = loadStorageConfig({
    S3_ENDPOINT: s.s3Endpoint,
    S3_ACCESS_KEY_ID: s.s3AccessKeyId,
    S3_SECRET_ACCESS_KEY: s.s3SecretAccessKey,
    STORAGE_RETRY_BASE_DELAY_MS: '20',
    STORAGE_RETRY_MAX_DELAY_MS: '200',
    STORAGE_RETRY_MAX_ATTEMPTS: '4',
    ...env,
  });
  return { ...base, ...over };
}

export function makeStorage(config: R2Config = localConfig(), clientOptions: S3ClientOptions = {}) {
  const s3 = createS3Client(config, clientOptions);
  return { config, s3, storage: new ObjectStorage(config, s3) };
}

export async function tmpDir(prefix: string): Promise<string> {
  return fsp.mkdtemp(path.join(os.tmpdir(), `st-storage-${prefix}-`));
}

/** Writes `bytes` of pseudo-random data in 1 MiB chunks (never all in memory); returns its sha256. */
export async function writeBigFile(file: string, bytes: number): Promise<string> {
  const h = createHash('sha256');
  const block = randomBytes(1024 * 1024);
  const out = createWriteStream(file);
  let left = bytes;
  let i = 0;
  while (left > 0) {
    const chunk = Buffer.from(block.subarray(0, Math.min(left, block.length)));
    chunk.writeUInt32LE(i++, 0); // every MiB differs
    h.update(chunk);
    if (!out.write(chunk)) await once(out, 'drain');
    left -= chunk.length;
  }
  out.end();
  await once(out, 'finish');
  return h.digest('hex');
}

export function sha256(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

/**
 * A TCP proxy to `target`. `cutAfterUpstreamBytes`/`cutAfterDownstreamBytes`
 * make it drop every connection once that many bytes went up/down, either
 * once (`mode: 'once'`: connections reset, proxy keeps listening) or for good
 * (`mode: 'stop'`: the listener closes, new connections are refused, like a
 * stopped server).
 */
export class CuttableProxy {
  private server!: net.Server;
  private readonly sockets = new Set<net.Socket>();
  port = 0;
  connections = 0;
  up = 0;
  down = 0;
  cuts = 0;
  cutRule: { up?: number; down?: number; mode: 'once' | 'stop' } | null = null;

  constructor(private readonly target: { host: string; port: number }) {}

  async start(port = 0): Promise<this> {
    this.server = net.createServer((client) => {
      this.connections++;
      const upstream = net.connect(this.target.port, this.target.host);
      this.sockets.add(client);
      this.sockets.add(upstream);
      const drop = () => {
        client.destroy();
        upstream.destroy();
        this.sockets.delete(client);
        this.sockets.delete(upstream);
      };
      client.on('data', (d: Buffer) => {
        this.up += d.length;
        if (!upstream.write(d)) client.pause();
        this.check();
      });
      upstream.on('drain', () => client.resume());
      upstream.on('data', (d: Buffer) => {
        this.down += d.length;
        if (!client.write(d)) upstream.pause();
        this.check();
      });
      client.on('drain', () => upstream.resume());
      client.on('error', drop);
      upstream.on('error', drop);
      client.on('close', drop);
      upstream.on('close', drop);
    });
    this.server.listen(port, '127.0.0.1');
    await once(this.server, 'listening');
    this.port = (this.server.address() as net.AddressInfo).port;
    return this;
  }

  private check(): void {
    const r = this.cutRule;
    if (!r) return;
    if ((r.up !== undefined && this.up >= r.up) || (r.down !== undefined && this.down >= r.down)) {
      this.cutRule = null;
      this.cuts++;
      if (r.mode === 'stop') void this.stop();
      else this.resetAll();
    }
  }

  resetAll(): void {
    for (const s of this.sockets) {
      if (typeof s.resetAndDestroy === 'function') s.resetAndDestroy();
      else s.destroy();
    }
    this.sockets.clear();
  }

  private stopped = false;

  async stop(): Promise<void> {
    this.resetAll();
    if (this.stopped) return;
    this.stopped = true;
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }
}

export async function startHttp(handler: http.RequestListener): Promise<{ server: http.Server; port: number; url: string; close(): Promise<void> }> {
  const server = http.createServer(handler);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  return {
    server,
    port,
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

export function minioTarget(): { host: string; port: number } {
  const u = new URL(serviceEnv().s3Endpoint);
  return { host: u.hostname, port: Number(u.port || 80) };
}

/** Small files with real image headers, 64×64 (magic bytes and the declared size are what the fetcher checks). */
export const JPEG = jpegOf(64, 64);
export const PNG = pngOf(64, 64);
export const WEBP = webpOf(64, 64);
export const MP4 = Buffer.concat([Buffer.from([0, 0, 0, 0x18]), Buffer.from('ftypisom'), randomBytes(200)]);
export const HTML = Buffer.from('<!doctype html><html><body>not an image</body></html>'.padEnd(300, ' '));
