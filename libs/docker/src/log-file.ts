import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { once } from 'node:events';
import * as path from 'node:path';

/**
 * Append-only log file with backpressure: `write` reports when the kernel
 * side is behind so the caller can pause the container's stream. A write
 * error (disk full) is remembered and further output is discarded rather
 * than failing the training run; `error` reports it.
 */
export class LogFile {
  error: Error | null = null;

  private constructor(private readonly stream: WriteStream) {
    stream.on('error', (e) => {
      this.error ??= e;
    });
  }

  static async open(filePath: string): Promise<LogFile> {
    await mkdir(path.dirname(filePath), { recursive: true });
    const stream = createWriteStream(filePath, { flags: 'a', highWaterMark: 256 * 1024 });
    await once(stream, 'open');
    return new LogFile(stream);
  }

  write(chunk: Buffer): boolean {
    if (this.error || this.stream.destroyed) return true;
    return this.stream.write(chunk);
  }

  async drained(): Promise<void> {
    const s = this.stream;
    if (this.error || s.destroyed || !s.writableNeedDrain) return;
    // Manual listeners, removed on the first event: `events.once` races would leak one per call.
    await new Promise<void>((resolve) => {
      const done = (): void => {
        s.off('drain', done);
        s.off('close', done);
        s.off('error', done);
        resolve();
      };
      s.on('drain', done);
      s.on('close', done);
      s.on('error', done);
    });
  }

  async close(): Promise<void> {
    if (this.stream.destroyed || this.stream.writableFinished) return;
    const closed = once(this.stream, 'close').catch(() => undefined);
    this.stream.end();
    await closed;
  }
}
