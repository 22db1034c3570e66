import { readFile } from 'node:fs/promises';
import { dockerHarness, sh, type DockerHarness } from './__fixtures__/harness';

jest.setTimeout(120_000);

describe('DockerContainerRuntime lifecycle (real engine)', () => {
  let h: DockerHarness;
  beforeAll(async () => {
    h = await dockerHarness('lifecycle');
  });
  afterAll(async () => {
    await h.cleanup();
  });
  afterEach(async () => {
    // Removal is guaranteed on every path: nothing labelled for this suite survives a run.
    expect(await h.leftovers()).toEqual([]);
  });

  it('reports success for exit 0 and keeps stdout/stderr lines', async () => {
    const lines: Array<[string, string]> = [];
    let startedId = '';
    const spec = h.spec({ argv: sh('echo hello; echo oops >&2; exit 0') });
    const r = await h.runtime.run(spec, { onLine: (l, s) => lines.push([l, s]), onStarted: (id) => (startedId = id) });
    expect(r).toMatchObject({ exitCode: 0, oomKilled: false, failureClass: null, logFilePath: spec.logFilePath });
    expect(r.containerId).toBe(startedId);
    expect(lines).toEqual(expect.arrayContaining([['hello', 'stdout'], ['oops', 'stderr']]));
    expect(r.lastLines).toEqual(expect.arrayContaining(['hello', 'oops']));
    const log = await readFile(spec.logFilePath, 'utf8');
    expect(log).toContain('hello\n');
    expect(log).toContain('oops\n');
  });

  it('classifies a non-zero exit as an engine failure with its exit code', async () => {
    const r = await h.runtime.run(h.spec({ argv: sh('echo "Traceback: boom" >&2; exit 3') }));
    expect(r).toMatchObject({ exitCode: 3, oomKilled: false, failureClass: 'engine' });
    expect(r.failureMessage).toMatch(/exited with code 3/);
    expect(r.lastLines).toContain('Traceback: boom');
  });

  it('classifies a missing image as infrastructure, without throwing', async () => {
    const r = await h.runtime.run(h.spec({ image: 'stationthis-test/no-such-image:never' }));
    expect(r).toMatchObject({ containerId: '', exitCode: null, failureClass: 'infrastructure' });
    expect(r.failureMessage).toMatch(/ensureImage/);
  });

  it('kills a run that passes its overall deadline (timeout), even when it ignores SIGTERM', async () => {
    const t0 = Date.now();
    const r = await h.runtime.run(
      h.spec({ argv: sh('trap "" TERM; while true; do echo "steps: tick"; sleep 0.2; done'), deadlineMs: 1500, stopGraceSeconds: 1 }),
    );
    const took = Date.now() - t0;
    expect(r.failureClass).toBe('timeout');
    expect(r.exitCode).toBe(137); // SIGKILL after the 1 s grace
    expect(took).toBeGreaterThanOrEqual(1500);
    expect(took).toBeLessThan(15_000);
  });

  it('stops gracefully with SIGTERM first: a trainer that handles it exits with its own code', async () => {
    const r = await h.runtime.run(
      h.spec({ argv: sh('trap "echo got-term; exit 42" TERM; while true; do sleep 0.1; done'), deadlineMs: 1000, stopGraceSeconds: 10 }),
    );
    expect(r.failureClass).toBe('timeout');
    expect(r.exitCode).toBe(42);
    expect(r.lastLines).toContain('got-term');
    expect(r.durationMs).toBeLessThan(9_000);
  });

  it('kills a run that stops making progress (stall), counting only progress lines', async () => {
    // Progress for ~1 s, then only chatter: the chatter must not keep it alive.
    const script = 'for i in 1 2 3 4 5; do echo "steps: $i/100"; sleep 0.2; done; while true; do echo "INFO: still loading"; sleep 0.1; done';
    const t0 = Date.now();
    const r = await h.runtime.run(
      h.spec({ argv: sh(script), stallTimeoutMs: 1500, isProgressLine: (l) => l.startsWith('steps:') }),
    );
    const took = Date.now() - t0;
    expect(r.failureClass).toBe('stall');
    expect(r.failureMessage).toMatch(/no progress line for 1500 ms/);
    expect(took).toBeGreaterThanOrEqual(2400);
    expect(took).toBeLessThan(15_000);
  });

  it('does not stall a run whose progress lines keep coming', async () => {
    const r = await h.runtime.run(
      h.spec({ argv: sh('for i in $(seq 1 15); do echo "steps: $i/15"; sleep 0.2; done'), stallTimeoutMs: 1000 }),
    );
    expect(r.failureClass).toBeNull();
  });

  it('cancels on abort: graceful stop, then kill, failure class cancelled', async () => {
    const ac = new AbortController();
    const r = await h.runtime.run(
      h.spec({ argv: sh('trap "" TERM; echo started; sleep 600') }),
      { onLine: (l) => l === 'started' && setTimeout(() => ac.abort(), 200) },
      ac.signal,
    );
    expect(r.failureClass).toBe('cancelled');
    expect(r.exitCode).toBe(137);
  });

  it('returns cancelled without creating anything when the signal is already aborted', async () => {
    const ac = new AbortController();
    ac.abort();
    const r = await h.runtime.run(h.spec(), {}, ac.signal);
    expect(r).toMatchObject({ containerId: '', failureClass: 'cancelled' });
  });

  it('reports OOM under a small memory limit', async () => {
    const r = await h.runtime.run(
      h.spec({ argv: ['perl', '-e', '$x = "a" x (200*1024*1024); print length($x), "\\n"'], memoryBytes: 32 * 1024 * 1024 }),
    );
    expect(r.oomKilled).toBe(true);
    expect(r.failureClass).toBe('oom');
    expect(r.exitCode).toBe(137);
  });

  it('removes the container when the observer throws', async () => {
    const r = await h.runtime.run(h.spec({ argv: sh('echo a; echo b') }), {
      onLine: () => {
        throw new Error('observer bug');
      },
    });
    expect(r.failureClass).toBeNull();
  });
});
