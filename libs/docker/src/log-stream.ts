import { Writable } from 'node:stream';
import type { LogStreamName } from './container-runtime';

/** Longest line delivered to observers; the rest of a longer line is dropped (the log file keeps it). */
export const DEFAULT_MAX_LINE_BYTES = 8 * 1024;

const LF = 0x0a;
const CR = 0x0d;

/**
 * Splits a byte stream into lines on `\n`, `\r\n` and a lone `\r` (tqdm redraws
 * its bar with `\r`, so every redraw becomes one update). Empty lines are
 * skipped. Memory is bounded by `maxLineBytes` whatever the input: bytes past
 * the cap are counted, not kept.
 */
export class LineSplitter {
  private parts: Buffer[] = [];
  private kept = 0;
  private dropped = 0;

  constructor(
    private readonly onLine: (line: string) => void,
    private readonly maxLineBytes: number = DEFAULT_MAX_LINE_BYTES,
  ) {}

  push(chunk: Buffer): void {
    let start = 0;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i];
      if (b === LF || b === CR) {
        this.keep(chunk, start, i);
        this.emit();
        start = i + 1;
      }
    }
    this.keep(chunk, start, chunk.length);
  }

  /** Emits a final unterminated line, if any. */
  flush(): void {
    this.emit();
  }

  private keep(chunk: Buffer, from: number, to: number): void {
    if (to <= from) return;
    const room = this.maxLineBytes - this.kept;
    const take = Math.min(room, to - from);
    if (take > 0) {
      // Copy: a slice would pin the whole (up to 64 KiB) chunk while a line waits for its end.
      this.parts.push(Buffer.from(chunk.subarray(from, from + take)));
      this.kept += take;
    }
    this.dropped += to - from - Math.max(take, 0);
  }

  private emit(): void {
    if (this.kept === 0 && this.dropped === 0) return;
    let line = (this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts, this.kept)).toString('utf8');
    if (this.dropped > 0) line += ` …[${this.dropped} bytes truncated]`;
    this.parts = [];
    this.kept = 0;
    this.dropped = 0;
    this.onLine(line);
  }
}

/** Keeps the last `capacity` items. */
export class RingBuffer<T> {
  private items: T[] = [];
  private next = 0;
  constructor(private readonly capacity: number) {}
  push(item: T): void {
    if (this.capacity <= 0) return;
    if (this.items.length < this.capacity) this.items.push(item);
    else this.items[this.next] = item;
    this.next = (this.next + 1) % this.capacity;
  }
  toArray(): T[] {
    return this.items.length < this.capacity ? [...this.items] : [...this.items.slice(this.next), ...this.items.slice(0, this.next)];
  }
}

export interface DemuxSink {
  /** Receives each payload piece. Return false to pause the source until `drained()` resolves. */
  write(payload: Buffer, stream: LogStreamName): boolean;
  drained(): Promise<void>;
}

/**
 * A Writable that decodes Docker's multiplexed attach stream (8-byte frame
 * headers: type, 0, 0, 0, big-endian length) and hands payloads to `sink`.
 * Unlike `modem.demuxStream` it honours backpressure (the callback waits for
 * the sink to drain, so the source pauses and, through the pipe, so does the
 * container) and never concatenates frames. A header with an unknown stream
 * type means a TTY stream: the rest passes through raw as stdout.
 */
export class DockerStreamDemuxer extends Writable {
  private header = Buffer.alloc(8);
  private headerFill = 0;
  private frameLeft = 0;
  private frameStream: LogStreamName = 'stdout';
  private raw = false;

  constructor(private readonly sink: DemuxSink) {
    super({ highWaterMark: 64 * 1024 });
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    let ok: boolean;
    try {
      ok = this.decode(chunk);
    } catch (e) {
      cb(e as Error);
      return;
    }
    if (ok) cb();
    else this.sink.drained().then(() => cb(), cb);
  }

  private decode(chunk: Buffer): boolean {
    if (this.raw) return this.sink.write(chunk, 'stdout');
    let ok = true;
    let i = 0;
    while (i < chunk.length) {
      if (this.frameLeft > 0) {
        const n = Math.min(this.frameLeft, chunk.length - i);
        ok = this.sink.write(chunk.subarray(i, i + n), this.frameStream) && ok;
        this.frameLeft -= n;
        i += n;
        continue;
      }
      const n = Math.min(8 - this.headerFill, chunk.length - i);
      chunk.copy(this.header, this.headerFill, i, i + n);
      this.headerFill += n;
      i += n;
      if (this.headerFill < 8) break;
      this.headerFill = 0;
      const type = this.header[0];
      if (type > 2 || this.header[1] !== 0 || this.header[2] !== 0 || this.header[3] !== 0) {
        this.raw = true;
        ok = this.sink.write(Buffer.from(this.header), 'stdout') && ok;
        if (i < chunk.length) ok = this.sink.write(chunk.subarray(i), 'stdout') && ok;
        return ok;
      }
      this.frameStream = type === 2 ? 'stderr' : 'stdout';
      this.frameLeft = this.header.readUInt32BE(4);
    }
    return ok;
  }
}
