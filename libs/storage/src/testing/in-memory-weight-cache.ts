/**
 * WeightCachePort in memory: r2 sources come from an InMemoryObjects, https
 * sources from a map, local sources from disk; files are written under `dir`
 * and verified like the real cache (same spec validation, same sha256 rule).
 * No locks, no eviction. Passes test/conformance/weight-cache.suite.ts.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { StorageError } from '../errors';
import { validateWeightSpec } from '../weight-spec';
import type { AcquireOptions, WeightCachePort, WeightLease, WeightSpec } from '../weight-cache.port';
import { InMemoryObjects } from './in-memory-objects';

export class InMemoryWeightCache implements WeightCachePort {
  /** Bodies of https sources, by URL. */
  readonly web = new Map<string, Buffer>();
  /** Leases not yet released, by file name. */
  readonly leases = new Map<string, number>();
  private readonly verified = new Map<string, string>();

  constructor(
    readonly dir: string,
    readonly objects: InMemoryObjects = new InMemoryObjects(),
  ) {}

  async acquire(spec: WeightSpec, opts: AcquireOptions = {}): Promise<WeightLease> {
    validateWeightSpec(spec);
    if (opts.signal?.aborted) throw new StorageError('aborted', `Download of weight ${spec.fileName} was cancelled.`);
    const file = path.join(this.dir, 'files', spec.fileName);
    const src = JSON.stringify(spec.source);
    let downloaded = false;
    if (this.verified.get(spec.fileName) !== `${src}|${spec.sha256?.toLowerCase() ?? ''}`) {
      const s = spec.source;
      let body: Buffer | null;
      if (s.kind === 'r2') body = this.objects.get(s.bucketAlias, s.key);
      else if (s.kind === 'https') body = this.web.get(s.url) ?? null;
      else body = await fsp.readFile(s.path).catch(() => null);
      if (!body) throw new StorageError('not-found', `Weight ${spec.fileName}: the source ${s.kind === 'r2' ? `'${s.key}'` : s.kind === 'local' ? s.path : s.url} does not exist. Provision it there.`);
      const sha256 = createHash('sha256').update(body).digest('hex');
      if (spec.sha256 && sha256 !== spec.sha256.toLowerCase()) {
        throw new StorageError('invalid-content', `Weight ${spec.fileName} failed verification: got sha256 ${sha256} (${body.length} bytes), expected ${spec.sha256}. The download was discarded.`);
      }
      await fsp.mkdir(path.dirname(file), { recursive: true });
      await fsp.writeFile(file, body);
      opts.onProgress?.({ fileName: spec.fileName, bytes: body.length, totalBytes: body.length, phase: 'download' });
      this.verified.set(spec.fileName, `${src}|${spec.sha256?.toLowerCase() ?? ''}`);
      downloaded = true;
    }
    this.leases.set(spec.fileName, (this.leases.get(spec.fileName) ?? 0) + 1);
    let released = false;
    return {
      path: file,
      downloaded,
      release: async () => {
        if (released) return;
        released = true;
        this.leases.set(spec.fileName, (this.leases.get(spec.fileName) ?? 1) - 1);
      },
    };
  }
}
