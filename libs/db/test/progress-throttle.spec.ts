import { ProgressThrottle } from '../src';

describe('ProgressThrottle', () => {
  it('writes at most once per interval, merging values and log lines', () => {
    let now = 0;
    const t = new ProgressThrottle({ minIntervalMs: 1000, now: () => now });
    expect(t.offer({ progress: 1, logLines: ['a'] })).toEqual({ progress: 1, logLines: ['a'] });
    now = 100;
    expect(t.offer({ progress: 2, currentStep: 20, logLines: ['b'] })).toBeNull();
    now = 200;
    expect(t.offer({ progress: 3, logLines: ['c'] })).toBeNull();
    expect(t.dueInMs()).toBe(800);
    now = 1000;
    expect(t.offer({ currentLoss: 0.5 })).toEqual({ progress: 3, currentStep: 20, currentLoss: 0.5, logLines: ['b', 'c'] });
    expect(t.hasPending()).toBe(false);
  });

  it('always lets forced (phase / terminal) updates through, and flush drains', () => {
    let now = 0;
    const t = new ProgressThrottle({ minIntervalMs: 1000, now: () => now });
    t.offer({ progress: 1 });
    now = 10;
    expect(t.offer({ progress: 50 }, { force: true })).toEqual({ progress: 50 });
    now = 20;
    expect(t.offer({ progress: 60 })).toBeNull();
    expect(t.flush()).toEqual({ progress: 60 });
    expect(t.flush()).toBeNull();
  });

  it('bounds pending log lines', () => {
    const now = 0;
    const t = new ProgressThrottle({ minIntervalMs: 1000, maxPendingLogLines: 3, now: () => now });
    t.offer({});
    for (let i = 0; i < 10; i++) t.offer({ logLines: [`l${i}`] });
    expect(t.flush()?.logLines).toEqual(['l7', 'l8', 'l9']);
  });
});
