import { loadJobEventsConfig, WebhookConfigError } from './webhook-config';

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
    expect(s).toMatchObject({ id: 'platform', url: 'https://hooks.example/training', types: ['job.status', 'job.failed'], from: 'now' });
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
  ])('refuses %s with a message that says what to fix', (raw, message) => {
    expect(() => loadJobEventsConfig({ WEBHOOK_SUBSCRIPTIONS: raw })).toThrow(WebhookConfigError);
    expect(() => loadJobEventsConfig({ WEBHOOK_SUBSCRIPTIONS: raw })).toThrow(message);
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
