/**
 * What a person sees from `cli follow` and `cli result`: the live line fits
 * the terminal at every width, plain lines come at phase changes, checkpoints
 * and every tenth of the steps, and the result table stays short.
 */
import { followJob, UNREADABLE_EXIT, WORKER_GONE_EXIT } from './follow';
import {
  etaNow,
  formatDuration,
  formatLoss,
  outcomeOf,
  plainEvery,
  plainUpdates,
  renderLiveLine,
  renderResultTable,
  snapshotOf,
  type FollowSnapshot,
  type JobResult,
} from './progress-bar';

/** Carriage return or escape: what a terminal redraw writes and a log must not get. */
const hasControl = (text: string) => text.includes('\r') || text.includes('\u001b');
const T0 = new Date('2026-12-07T06:00:00Z');
const at = (s: number) => new Date(T0.getTime() + s * 1000);
const snap = (over: Partial<FollowSnapshot> = {}): FollowSnapshot => ({
  status: 'RUNNING', step: 60, total: 100, loss: 0.12345, etaSeconds: 40, updatedAt: T0, startedAt: T0,
  checkpoints: 0, failureReason: null, failureClass: null, ...over,
});

describe('renderLiveLine', () => {
  it('shows the phase, a bar filled to the step, step/total, loss and ETA', () => {
    const line = renderLiveLine(snap(), 120, at(10));
    expect(line).toMatch(/^RUNNING +\[#+\.+\] {2}60\/100 {2}loss 0\.1235 {2}ETA 0:30$/);
    const bar = /\[([#.]+)\]/.exec(line)?.[1] ?? '';
    expect(bar.split('').filter((c) => c === '#').length / bar.length).toBeCloseTo(0.6, 1);
  });

  it.each([20, 40, 60, 80, 120, 200])('never wider than a %i-column terminal less one', (cols) => {
    for (const s of [snap(), snap({ total: null, step: null }), snap({ checkpoints: 3, loss: 1.5e-6 }), snap({ status: 'PROVISIONING', etaSeconds: null })]) {
      expect(renderLiveLine(s, cols, at(1)).length).toBeLessThanOrEqual(cols - 1);
    }
  });

  it('drops ETA and loss before the step when narrow, and keeps a bar', () => {
    const line = renderLiveLine(snap(), 40, at(0));
    expect(line).toContain('60/100');
    expect(line).not.toContain('ETA');
    expect(line).toMatch(/\[[#.]{5,}\]/);
  });

  it('turns a spinner while the total is unknown', () => {
    const a = renderLiveLine(snap({ status: 'PROVISIONING', step: null, total: null, loss: null, etaSeconds: null }), 80, at(0), 0);
    const b = renderLiveLine(snap({ status: 'PROVISIONING', step: null, total: null, loss: null, etaSeconds: null }), 80, at(0), 1);
    expect(a).toMatch(/^PROVISIONING\[\|/);
    expect(a).not.toBe(b);
  });
});

describe('times and numbers', () => {
  it('formats durations as m:ss or h:mm:ss', () => {
    expect(formatDuration(0)).toBe('0:00');
    expect(formatDuration(75)).toBe('1:15');
    expect(formatDuration(3725)).toBe('1:02:05');
    expect(formatDuration(-5)).toBe('0:00');
  });
  it('counts the ETA down from the time the worker wrote it, never below zero, none when ended', () => {
    expect(etaNow(snap({ etaSeconds: 40 }), at(15))).toBe(25);
    expect(etaNow(snap({ etaSeconds: 40 }), at(90))).toBe(0);
    expect(etaNow(snap({ status: 'COMPLETED' }), at(1))).toBeNull();
  });
  it('prints small losses in exponent form', () => {
    expect(formatLoss(0.5)).toBe('0.5000');
    expect(formatLoss(0.00001234)).toBe('1.23e-5');
    expect(formatLoss(null)).toBe('-');
  });
});

describe('plainUpdates (not a terminal)', () => {
  it('writes one line first, then one per phase change, checkpoint and tenth of the steps', () => {
    const every = plainEvery(100);
    expect(every).toBe(10);
    expect(plainUpdates(null, snap({ status: 'QUEUED', step: null }), at(0), every)).toHaveLength(1);
    expect(plainUpdates(snap({ step: 61 }), snap({ step: 62 }), at(1), every)).toEqual([]);
    expect(plainUpdates(snap({ step: 68 }), snap({ step: 71 }), at(1), every)).toEqual(['[+0:01] RUNNING step 71/100 loss 0.1235 ETA 0:39']);
    expect(plainUpdates(snap({ status: 'RUNNING' }), snap({ status: 'FINALIZING' }), at(2), every)).toHaveLength(1);
    expect(plainUpdates(snap({ checkpoints: 1 }), snap({ checkpoints: 2 }), at(2), every)[0]).toMatch(/checkpoint 2 stored$/);
  });
  it('has no terminal control characters', () => {
    const lines = plainUpdates(null, snap(), at(3), 10);
    expect(hasControl(lines.join(''))).toBe(false);
  });
});

describe('outcomeOf', () => {
  it('exits 0 on COMPLETED and 1 with the reason otherwise', () => {
    expect(outcomeOf(snap({ status: 'COMPLETED', step: 100 }), 'j1')).toEqual({ code: 0, line: 'job j1 COMPLETED after 100/100 steps, final loss 0.1235' });
    expect(outcomeOf(snap({ status: 'FAILED', failureReason: 'the loss became NaN at step 3', failureClass: 'engine' }), 'j1')).toEqual({ code: 1, line: 'job j1 FAILED (engine): the loss became NaN at step 3' });
    expect(outcomeOf(snap({ status: 'CANCELLED' }), 'j1').code).toBe(1);
  });
});

describe('snapshotOf', () => {
  it('reads a job document defensively', () => {
    const s = snapshotOf({ status: 'RUNNING', currentStep: 5, totalSteps: 'x', currentLoss: Number.NaN, updatedAt: '2026-12-07T06:00:00Z', checkpoints: [{}, {}] });
    expect(s).toMatchObject({ status: 'RUNNING', step: 5, total: null, loss: null, checkpoints: 2 });
    expect(s.updatedAt?.toISOString()).toBe('2026-12-07T06:00:00.000Z');
    expect(snapshotOf({ status: 'RUNNING', checkpoints: [{}] }, 4).checkpoints).toBe(4);
  });
});

describe('renderResultTable', () => {
  const result: JobResult = {
    jobId: '64b000000000000000000099', status: 'COMPLETED', name: 'demo', step: 100, total: 100, finalLoss: 0.0912, failureReason: null,
    modelUrl: 'http://127.0.0.1:9000/models/loras/demo.safetensors', sampleUrls: ['http://s/1.png', 'http://s/2.png', 'http://s/3.png', 'http://s/4.png'],
    checkpoints: 2, charged: 120, refunded: 20, balance: 4900, trainSeconds: 42,
  };
  it('lists the job, model URL, two samples, points and balance in at most 14 lines', () => {
    const lines = renderResultTable(result);
    expect(lines.length).toBeLessThanOrEqual(14);
    const text = lines.join('\n');
    expect(text).toContain('Status       COMPLETED');
    expect(text).toContain('Steps        100/100  in 0:42');
    expect(text).toContain('Model        http://127.0.0.1:9000/models/loras/demo.safetensors');
    expect(text).toContain('http://s/2.png');
    expect(text).not.toContain('http://s/3.png');
    expect(text).toContain('(+2 more');
    expect(text).toContain('charged 120, refunded 20, used 100');
    expect(text).toContain('Balance      4900 points');
  });
  it('shows the reason of a failed job and no model', () => {
    const text = renderResultTable({ ...result, status: 'FAILED', failureReason: 'dataset unreadable', modelUrl: null, sampleUrls: [] }).join('\n');
    expect(text).toContain('Reason       dataset unreadable');
    expect(text).toContain('Model        (none)');
  });
});

describe('followJob', () => {
  const script = (snaps: (FollowSnapshot | null)[]) => {
    let i = 0;
    let clock = 0;
    const out: string[] = [];
    return {
      out,
      opts: {
        jobId: 'j1',
        read: async () => snaps[Math.min(i++, snaps.length - 1)],
        now: () => at(clock),
        sleep: async () => void (clock += 1),
      },
    };
  };
  const running = [snap({ status: 'QUEUED', step: null, total: null, loss: null, etaSeconds: null }), snap({ step: 10 }), snap({ step: 50 }), snap({ status: 'COMPLETED', step: 100 })];

  it('in a terminal: redraws one line, leaves a line per finished phase, ends with the outcome', async () => {
    const s = script(running);
    const code = await followJob({ ...s.opts, out: { write: (t) => s.out.push(t), isTTY: true, columns: () => 80 } });
    expect(code).toBe(0);
    const screen = s.out.join('');
    expect(screen).toContain('\rRUNNING'.replace('\r', '\r\x1b[2K'));
    expect(screen).toMatch(/QUEUED +0:01\n/);
    expect(screen).toMatch(/RUNNING +0:02\n/);
    expect(screen.endsWith('job j1 COMPLETED after 100/100 steps, final loss 0.1235\n')).toBe(true);
  });

  it('not a terminal: plain lines only, no control characters', async () => {
    const s = script(running);
    await followJob({ ...s.opts, out: { write: (t) => s.out.push(t), isTTY: false, columns: () => 80 } });
    expect(hasControl(s.out.join(''))).toBe(false);
    expect(s.out.join('').trim().split('\n')).toHaveLength(5); // QUEUED, RUNNING, step 50, COMPLETED, outcome
  });

  it('--json: one object per change', async () => {
    const s = script(running);
    await followJob({ ...s.opts, json: true, out: { write: (t) => s.out.push(t), isTTY: true, columns: () => 80 } });
    const objs = s.out.join('').trim().split('\n').map((l) => JSON.parse(l));
    expect(objs.map((o) => o.status)).toEqual(['QUEUED', 'RUNNING', 'RUNNING', 'COMPLETED']);
  });

  it('exits 1 with the reason when the job fails', async () => {
    const s = script([snap(), snap({ status: 'FAILED', failureReason: 'out of memory', failureClass: 'oom' })]);
    expect(await followJob({ ...s.opts, out: { write: (t) => s.out.push(t), isTTY: false, columns: () => 80 } })).toBe(1);
    expect(s.out.at(-1)).toBe('job j1 FAILED (oom): out of memory\n');
  });

  it('exits 3 when the named worker process is gone and the job has not ended', async () => {
    const s = script([snap(), snap()]);
    let polls = 0;
    const code = await followJob({ ...s.opts, workerPid: 12345, alive: () => polls++ < 1, out: { write: (t) => s.out.push(t), isTTY: false, columns: () => 80 } });
    expect(code).toBe(WORKER_GONE_EXIT);
    expect(s.out.at(-1)).toMatch(/worker \(pid 12345\) has exited/);
  });

  it('rides out a database blip: failed reads are retried, the job is followed to its end', async () => {
    const s = script(running);
    let calls = 0;
    const flaky = async () => {
      calls++;
      if (calls === 2 || calls === 3) throw new Error('connection reset');
      return s.opts.read();
    };
    const code = await followJob({ ...s.opts, read: flaky, out: { write: (t) => s.out.push(t), isTTY: false, columns: () => 80 } });
    expect(code).toBe(0);
    expect(s.out.filter((l) => l.includes('retrying'))).toHaveLength(2);
  });

  it('exits 4, not 1, when the job cannot be read for the whole retry window', async () => {
    const s = script([snap()]);
    const code = await followJob({ ...s.opts, readRetryMs: 10_000, read: async () => Promise.reject(new Error('ECONNREFUSED')), out: { write: (t) => s.out.push(t), isTTY: false, columns: () => 80 } });
    expect(code).toBe(UNREADABLE_EXIT);
    expect(s.out.at(-1)).toMatch(/cannot read job j1 for .*ECONNREFUSED.*may still be running/);
  });

  it('throws for a job that does not exist', async () => {
    const s = script([null]);
    await expect(followJob({ ...s.opts, out: { write: () => undefined, isTTY: false, columns: () => 80 } })).rejects.toThrow(/job j1 not found/);
  });
});
