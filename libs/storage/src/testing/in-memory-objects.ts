/** Objects held in memory by bucket alias and key: the "remote" side the fakes read from and write to. */
import { resolveBucketAlias, type BucketAlias } from '../config';

export class InMemoryObjects {
  private readonly objects = new Map<string, Buffer>();

  private id(alias: BucketAlias | 'default', key: string): string {
    return `${resolveBucketAlias(alias)}/${key}`;
  }

  put(alias: BucketAlias | 'default', key: string, body: Buffer | string): void {
    this.objects.set(this.id(alias, key), Buffer.from(body));
  }

  get(alias: BucketAlias | 'default', key: string): Buffer | null {
    return this.objects.get(this.id(alias, key)) ?? null;
  }

  delete(alias: BucketAlias | 'default', key: string): void {
    this.objects.delete(this.id(alias, key));
  }

  keys(alias: BucketAlias | 'default', prefix = ''): string[] {
    const p = this.id(alias, prefix);
    return [...this.objects.keys()].filter((k) => k.startsWith(p)).map((k) => k.slice(k.indexOf('/') + 1));
  }
}
