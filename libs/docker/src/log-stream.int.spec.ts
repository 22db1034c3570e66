import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DockerStreamDemuxer, LineSplitter, RingBuffer } from './log-stream';

function frame(type: number, payload: string | Buffer): Buffer {
  const body = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  const h = Buffer.alloc(8);
  h[0] = type;
  h.writeUInt32BE(body.length, 4);
  return Buffer.concat([h, body]);
}

describe('LineSplitter', () => {
  const split = (chunks: Array<string | Buffer>, max?: number) => {
    const out: string[] = [];
    const s = new LineSplitter((l) => out.push(l), max);
    for (const c of chunks) s.push(Buffer.isBuffer(c) ? c : Buffer.from(c));
    s.flush();
    return out;
  };

  it('splits on \\n, \\r\\n and lone \\r, across chunk boundaries, skipping empty lines', () => {
    expect(split(['a\nb', 'c\r\nd\r', 'e\r', '\n\n', 'tail'])).toEqual(['a', 'bc', 'd', 'e', 'tail']);
  });

  it('keeps multi-byte UTF-8 characters split across chunks intact', () => {
    const bytes = Buffer.from('学習ステップ数: 10\n');
    expect(split([bytes.subarray(0, 4), bytes.subarray(4)])).toEqual(['学習ステップ数: 10']);
  });

  it('caps long lines and says how much was dropped', () => {
    expect(split(['x'.repeat(10), 'y'.repeat(10), '\nok\n'], 12)).toEqual(['xxxxxxxxxxyy …[8 bytes truncated]', 'ok']);
  });
});

describe('RingBuffer', () => {
  it('keeps the last N items in order', () => {
    const r = new RingBuffer<number>(3);
    [1, 2, 3, 4, 5].forEach((n) => r.push(n));
    expect(r.toArray()).toEqual([3, 4, 5]);
    const s = new RingBuffer<number>(3);
    s.push(1);
    expect(s.toArray()).toEqual([1]);
  });
});

describe('DockerStreamDemuxer', () => {
  it('routes frames to stdout/stderr, with headers and payloads split anywhere', async () => {
    const wire = Buffer.concat([frame(1, 'out1\n'), frame(2, 'err1\n'), frame(1, 'out2\n'), frame(2, '')]);
    for (let cut = 1; cut < wire.length; cut++) {
      const got: Record<string, string> = { stdout: '', stderr: '' };
      const d = new DockerStreamDemuxer({ write: (p, s) => ((got[s] += p.toString()), true), drained: async () => undefined });
      await pipeline(Readable.from([wire.subarray(0, cut), wire.subarray(cut)]), d);
      expect(got).toEqual({ stdout: 'out1\nout2\n', stderr: 'err1\n' });
    }
  });

  it('passes a non-multiplexed (TTY) stream through as stdout', async () => {
    const got: Array<[string, string]> = [];
    const d = new DockerStreamDemuxer({ write: (p, s) => (got.push([s, p.toString()]), true), drained: async () => undefined });
    await pipeline(Readable.from([Buffer.from('plain tty output\n'), Buffer.from('more\n')]), d);
    expect(got.every(([s]) => s === 'stdout')).toBe(true);
    expect(got.map(([, p]) => p).join('')).toBe('plain tty output\nmore\n');
  });

  it('honours backpressure: a slow sink pauses the source instead of buffering it', async () => {
    const chunk = frame(1, Buffer.alloc(64 * 1024, 0x61));
    const total = 400; // 25 MiB
    let produced = 0;
    let consumed = 0;
    let maxAhead = 0;
    const source = new Readable({
      highWaterMark: 64 * 1024,
      read() {
        if (produced === total) return this.push(null);
        produced++;
        maxAhead = Math.max(maxAhead, produced - consumed);
        this.push(chunk);
      },
    });
    let pending = false;
    const d = new DockerStreamDemuxer({
      write: (p) => {
        consumed += p.length / (64 * 1024);
        pending = true;
        return false; // always "full"
      },
      drained: () =>
        new Promise((r) =>
          setImmediate(() => {
            pending = false;
            r();
          }),
        ),
    });
    await pipeline(source, d);
    expect(pending).toBe(false);
    expect(Math.round(consumed)).toBe(total);
    // Only a few chunks were ever read ahead of the sink, not the whole 25 MiB.
    expect(maxAhead).toBeLessThan(8);
  });
});
