import { DEFAULT_DEAD_LETTER, loadJobEventsConfig, WebhookConfigError } from './webhook-config';
import { cursorKey } from './webhook-cursors';
import { isPermanentRefusal } from './webhook-dead-letters';

const SECRET = 'a-signing-secret-of-32-characters!';
const subs = (list: unknown) => JSON.stringify(list);

describe('webhook configuration', () => {
  it('reads subscriptions with a secret from the environment and never serializes the secret', () => {
    const config = loadJobEventsConfig({
      WEBHOOK_SUBSCRIPTIONS: subs([{ id: 'platform', url: 'https://hooks.example/training', secretEnv: 'HOOK_SECRET', types: ['job.status', 'job.failed'] }]),
      HOOK_SECRET: SECRET,
      WEBHOOK_TIMEOUT_MS: '2500',
    });
    expect(config.enabled).toBe(true);
    expect(config.timeoutMs).toBe(2500);
    const [s] = config.subscriptions;
    expect(s).toMatchObject({ id: 'platform', url: 'https://hooks.example/training', types: ['job.status', 'job.failed'], from: 'now', environments: null, deadLetter: DEFAULT_DEAD_LETTER });
    expect(s!.environmentsFor('development')).toEqual(['development']);
    expect(s!.wants('job.failed')).toBe(true);
    expect(s!.wants('checkpoint.stored')).toBe(false);
    expect(JSON.stringify(config)).not.toContain(SECRET);
    expect(JSON.stringify(s)).not.toContain(SECRET);
    expect(s!.sign(1, 'x')).toMatch(/^sha256=[0-9a-f]{64}$/);
  });

  it('defaults: no subscriptions, stall after 30 minutes; JOB_EVENTS=off turns everything off', () => {
    expect(loadJobEventsConfig({})).toMatchObject({ enabled: true, subscriptions: [], stallMs: 30 * 60_000, reconcileMs: 15_000 });
    expect(loadJobEventsConfig({ JOB_EVENTS: 'off', WEBHOOK_SUBSCRIPTIONS: 'not json' })).toMatchObject({ enabled: false, subscriptions: [] });
  });

  it.each([
    ['not json', /not valid JSON/],
    [subs({ id: 'x' }), /must be a JSON array/],
    [subs([{ id: 'bad id!', url: 'https://a.example', secret: SECRET }]), /id must be/],
    [subs([{ id: 'a', url: 'ftp://a.example', secret: SECRET }]), /http\(s\) URL/],
    [subs([{ id: 'a', url: 'https://a.example' }]), /secretEnv/],
    [subs([{ id: 'a', url: 'https://a.example', secretEnv: 'MISSING_SECRET_VAR' }]), /MISSING_SECRET_VAR named by secretEnv is not set/],
    [subs([{ id: 'a', url: 'https://a.example', secret: 'short' }]), /shorter than 16/],
    [subs([{ id: 'a', url: 'https://a.example', secret: SECRET, types: ['job.progress'] }]), /unknown event type "job.progress"/],
    [subs([{ id: 'a', url: 'https://a.example', secret: SECRET }, { id: 'a', url: 'https://b.example', secret: SECRET }]), /used twice/],
    [subs([{ id: 'a', url: 'https://a.example', secret: SECRET, environments: ['staging'] }]), /unknown environment "staging"/],
    [subs([{ id: 'a', url: 'https://a.example', secret: SECRET, environments: [] }]), /environments must be "\*" or a non-empty array/],
    [subs([{ id: 'a', url: 'https://a.example', secret: SECRET, deadLetter: { afterFailures: 0 } }]), /deadLetter.afterFailures must be a whole number of at least 1/],
    [subs([{ id: 'a', url: 'https://a.example', secret: SECRET, deadLetter: 'sometimes' }]), /deadLetter must be false or/],
  ])('refuses %s with a message that says what to fix', (raw, message) => {
    expect(() => loadJobEventsConfig({ WEBHOOK_SUBSCRIPTIONS: raw })).toThrow(WebhookConfigError);
    expect(() => loadJobEventsConfig({ WEBHOOK_SUBSCRIPTIONS: raw })).toThrow(message);
  });

  it('reads environments and the dead-letter policy per subscription', () => {
    const [all, listed, strict] = loadJobEventsConfig({
      WEBHOOK_SUBSCRIPTIONS: subs([
        { id: 'all', url: 'https://a.example', secret: SECRET, environments: '*', deadLetter: false },
        { id: 'listed', url: 'https://b.example', secret: SECRET, environments: ['production', 'development'] },
        { id: 'strict', url: 'https://c.example', secret: SECRET, deadLetter: { afterFailures: 3, maxAgeMinutes: 0 } },
      ]),
    }).subscriptions;
    expect(all!.environmentsFor('production')).toEqual([]);
    expect(all!.deadLetter).toBeNull();
    expect(listed!.environmentsFor('production')).toEqual(['production', 'development']);
    expect(strict!.deadLetter).toEqual({ afterFailures: 3, maxAgeMs: 0, breakerAfter: 1 });
  });

  it('reads the circuit breaker threshold and the refused-subscription retry period', () => {
    const config = loadJobEventsConfig({
      WEBHOOK_SUBSCRIPTIONS: subs([{ id: 'a', url: 'https://a.example', secret: SECRET, deadLetter: { breakerAfter: 3 } }]),
      WEBHOOK_REFUSED_RETRY_MS: '250',
    });
    expect(config.subscriptions[0]!.deadLetter).toEqual({ ...DEFAULT_DEAD_LETTER, breakerAfter: 3 });
    expect(config.refusedRetryMs).toBe(250);
    expect(loadJobEventsConfig({}).refusedRetryMs).toBe(60_000);
    expect(() => loadJobEventsConfig({ WEBHOOK_SUBSCRIPTIONS: subs([{ id: 'a', url: 'https://a.example', secret: SECRET, deadLetter: { breakerAfter: 0 } }]) })).toThrow(/deadLetter.breakerAfter must be a whole number of at least 1/);
  });

  it('keys the cursor by the environments delivered: the worker\'s by default, "*" or the sorted list otherwise', () => {
    const [own, all, listed, single] = loadJobEventsConfig({
      WEBHOOK_SUBSCRIPTIONS: subs([
        { id: 'own', url: 'https://a.example', secret: SECRET },
        { id: 'all', url: 'https://a.example', secret: SECRET, environments: '*' },
        { id: 'listed', url: 'https://a.example', secret: SECRET, environments: ['production', 'development', 'production'] },
        { id: 'single', url: 'https://a.example', secret: SECRET, environments: ['production'] },
      ]),
    }).subscriptions;
    expect(cursorKey(own!.cursorScope('development'), own!.id)).toBe('development:own');
    expect(cursorKey(own!.cursorScope('production'), own!.id)).toBe('production:own');
    // The same key on a dev and a prod worker: one cursor, each event delivered once.
    expect(all!.cursorScope('development')).toBe('*');
    expect(all!.cursorScope('production')).toBe('*');
    expect(listed!.cursorScope('production')).toBe('development,production');
    expect(listed!.cursorScope('development')).toBe('development,production');
    // Listing only the worker's own environment is the default cursor.
    expect(single!.cursorScope('production')).toBe('production');
  });

  it.each([
    [400, true], [413, true], [415, true], [422, true],
    // About the receiver as a whole (rotated secret, missing route, redirect): never one event's fault.
    [401, false], [403, false], [404, false], [405, false], [410, false], [302, false],
    // "Later": the receiver is down, slow or throttling.
    [408, false], [429, false], [500, false], [502, false], [503, false], [null, false],
  ])('HTTP %s refuses one event for good: %s', (status, permanent) => {
    expect(isPermanentRefusal(status)).toBe(permanent);
  });

  it('serializes the URL as its origin only (a path or query may hold a token), and hashes the full URL', () => {
    const config = loadJobEventsConfig({ WEBHOOK_SUBSCRIPTIONS: subs([{ id: 'p', url: 'https://user:pw@hooks.example/t/abc123secretpath?token=qwerty', secret: SECRET }]) });
    const [s] = config.subscriptions;
    const logged = JSON.stringify({ subscriptions: config.subscriptions });
    for (const hidden of ['abc123secretpath', 'qwerty', 'user', 'pw@']) expect(logged).not.toContain(hidden);
    expect(logged).toContain('"url":"https://hooks.example"');
    expect(s!.url).toBe('https://user:pw@hooks.example/t/abc123secretpath?token=qwerty');
    const other = loadJobEventsConfig({ WEBHOOK_SUBSCRIPTIONS: subs([{ id: 'p', url: 'https://hooks.example/t/other', secret: SECRET }]) }).subscriptions[0]!;
    expect(s!.urlHash).toMatch(/^[0-9a-f]{16}$/);
    expect(other.urlHash).not.toBe(s!.urlHash);
  });

  it('an error never quotes the secret', () => {
    try {
      loadJobEventsConfig({ WEBHOOK_SUBSCRIPTIONS: subs([{ id: 'a', url: 'nope', secret: SECRET }]) });
      throw new Error('expected a WebhookConfigError');
    } catch (e) {
      expect((e as Error).message).not.toContain(SECRET);
    }
  });
});
