/**
 * Webhook subscriptions and event loop settings, from the environment
 * (operator guide, "Job events and webhooks"):
 *
 *   WEBHOOK_SUBSCRIPTIONS  JSON array: [{"id": "platform", "url": "https://…",
 *                          "secretEnv": "WEBHOOK_SECRET_PLATFORM" (or "secret": "…"),
 *                          "types": ["job.status", …] (absent: every type),
 *                          "from": "now" | "start" (where a new subscription begins; default now),
 *                          "environments": ["production", "development"] | "*"
 *                            (whose jobs' events; default: this worker's TRAINING_ENVIRONMENT),
 *                          "deadLetter": {"afterFailures": 8, "maxAgeMinutes": 1440, "breakerAfter": 1} | false
 *                            (when an event the receiver refuses is set aside; see webhook-dead-letters.ts)}]
 *   WEBHOOK_TIMEOUT_MS     per request (default 10000)
 *   WEBHOOK_RETRY_BASE_MS  first retry delay (default 1000), doubled per failure with jitter,
 *   WEBHOOK_RETRY_MAX_MS   capped here (default 300000)
 *   WEBHOOK_POLL_MS        how often a caught-up subscription looks for new events (default 1000)
 *   WEBHOOK_REFUSED_RETRY_MS how often a subscription refused for a cursor conflict (another live
 *                          worker delivers the cursor to another URL) is tried again (default 60000)
 *   JOB_EVENTS             "off" disables the outbox writes and every loop (default on)
 *   JOB_EVENTS_RECONCILE_MS  reconciler period (default 15000)
 *   JOB_EVENTS_STALL_MINUTES RUNNING without a new step this long emits job.stalled (default 30; 0 = off)
 *
 * A secret is never logged: it lives in a private field of WebhookSubscription,
 * which serializes (JSON, pino) without it. Nor is the URL's path or query
 * (receivers often put a token there): the subscription serializes its origin only.
 */
import { createHash } from 'node:crypto';
import { isJobEventType, JOB_EVENT_TYPES, type JobEventType, type TrainingEnvironment } from '@stationthis/db';
import { signWebhook } from './webhook-signature';

export class WebhookConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WebhookConfigError';
  }
}

const ENVIRONMENTS: readonly TrainingEnvironment[] = ['production', 'development'];

/**
 * When an event a receiver keeps refusing is set aside (dead-lettered) so the
 * ones after it flow. Only per-event refusals (400, 413, 415, 422) count; see
 * webhook-dead-letters.ts.
 */
export interface DeadLetterPolicy {
  /** Per-event refusals of one event before it is set aside (default 8). */
  afterFailures: number;
  /** An event failing for longer than this since its first failure, whose latest answer was a per-event refusal, is set aside (default 24 h; 0 = never). */
  maxAgeMs: number;
  /**
   * Circuit breaker: consecutive events set aside with the same HTTP status
   * (no delivery between) after which the next one with that status is held
   * instead, because the receiver refuses everything (default 1).
   */
  breakerAfter: number;
}

export const DEFAULT_DEAD_LETTER: DeadLetterPolicy = { afterFailures: 8, maxAgeMs: 24 * 3_600_000, breakerAfter: 1 };

export class WebhookSubscription {
  readonly #secret: string;
  readonly #url: string;

  constructor(
    readonly id: string,
    url: string,
    secret: string,
    /** Empty: every type. */
    readonly types: readonly JobEventType[],
    readonly from: 'now' | 'start',
    /** Whose jobs' events: a list, '*' (every environment), or null (this worker's environment). */
    readonly environments: readonly TrainingEnvironment[] | '*' | null = null,
    /** Null: never set an event aside (the subscription waits for the receiver, however long). */
    readonly deadLetter: DeadLetterPolicy | null = DEFAULT_DEAD_LETTER,
  ) {
    this.#secret = secret;
    this.#url = url;
  }

  /** Where events are POSTed. Not for logs (the path or query may hold a token): use `safeUrl`. */
  get url(): string {
    return this.#url;
  }

  /** The URL's origin only, for logs and errors. */
  get safeUrl(): string {
    return new URL(this.#url).origin;
  }

  /** A short hash of the full URL: a delivery cursor remembers it, so a different URL under the same id is noticed. */
  get urlHash(): string {
    return createHash('sha256').update(this.#url).digest('hex').slice(0, 16);
  }

  /**
   * Which cursor delivers this subscription on a worker of `workerEnvironment`:
   * the worker's environment by default, `*` for every environment, else the
   * sorted list (`development,production`). Workers whose subscriptions cover
   * the same environments share one cursor, so a dev and a prod worker that
   * both say "*" deliver each event once, not once each.
   */
  cursorScope(workerEnvironment: TrainingEnvironment): string {
    if (this.environments === '*') return '*';
    if (this.environments === null) return workerEnvironment;
    return [...new Set(this.environments)].sort().join(',');
  }

  /** The environments delivered by a worker of `workerEnvironment`: empty means every one. */
  environmentsFor(workerEnvironment: TrainingEnvironment): readonly TrainingEnvironment[] {
    if (this.environments === '*') return [];
    return this.environments ?? [workerEnvironment];
  }

  wants(type: JobEventType): boolean {
    return this.types.length === 0 || this.types.includes(type);
  }

  sign(timestamp: number, body: string): string {
    return signWebhook(this.#secret, timestamp, body);
  }

  toJSON(): Record<string, unknown> {
    return { id: this.id, url: this.safeUrl, types: this.types, from: this.from, environments: this.environments ?? 'worker', deadLetter: this.deadLetter };
  }
}

export interface JobEventsConfig {
  enabled: boolean;
  subscriptions: WebhookSubscription[];
  timeoutMs: number;
  retryBaseMs: number;
  retryMaxMs: number;
  pollMs: number;
  /** How often a subscription refused for a cursor conflict is tried again. */
  refusedRetryMs: number;
  reconcileMs: number;
  stallMs: number;
}

export function loadJobEventsConfig(env: NodeJS.ProcessEnv = process.env): JobEventsConfig {
  const enabled = !/^(off|false|0|no)$/i.test(env['JOB_EVENTS'] ?? 'on');
  const config: JobEventsConfig = {
    enabled,
    subscriptions: enabled ? parseSubscriptions(env) : [],
    timeoutMs: int(env, 'WEBHOOK_TIMEOUT_MS', 10_000, 100),
    retryBaseMs: int(env, 'WEBHOOK_RETRY_BASE_MS', 1000, 10),
    retryMaxMs: int(env, 'WEBHOOK_RETRY_MAX_MS', 300_000, 10),
    pollMs: int(env, 'WEBHOOK_POLL_MS', 1000, 10),
    refusedRetryMs: int(env, 'WEBHOOK_REFUSED_RETRY_MS', 60_000, 10),
    reconcileMs: int(env, 'JOB_EVENTS_RECONCILE_MS', 15_000, 100),
    stallMs: int(env, 'JOB_EVENTS_STALL_MINUTES', 30, 0) * 60_000,
  };
  if (config.retryMaxMs < config.retryBaseMs) throw new WebhookConfigError(`WEBHOOK_RETRY_MAX_MS (${config.retryMaxMs}) is below WEBHOOK_RETRY_BASE_MS (${config.retryBaseMs}); raise the cap.`);
  return config;
}

function parseSubscriptions(env: NodeJS.ProcessEnv): WebhookSubscription[] {
  const raw = env['WEBHOOK_SUBSCRIPTIONS']?.trim();
  if (!raw) return [];
  let list: unknown;
  try {
    list = JSON.parse(raw);
  } catch (e) {
    throw new WebhookConfigError(`WEBHOOK_SUBSCRIPTIONS is not valid JSON (${(e as Error).message}); expected [{"id","url","secretEnv","types"}].`);
  }
  if (!Array.isArray(list)) throw new WebhookConfigError('WEBHOOK_SUBSCRIPTIONS must be a JSON array of subscriptions.');
  const seen = new Set<string>();
  return list.map((item, i) => {
    const s = (item ?? {}) as Record<string, unknown>;
    const where = `WEBHOOK_SUBSCRIPTIONS[${i}]`;
    const id = s['id'];
    if (typeof id !== 'string' || !/^[A-Za-z0-9_.-]{1,64}$/.test(id)) throw new WebhookConfigError(`${where}.id must be 1-64 characters of letters, digits, "_", "." or "-" (it names the delivery cursor).`);
    if (seen.has(id)) throw new WebhookConfigError(`${where}.id "${id}" is used twice; each subscription needs its own id.`);
    seen.add(id);
    const url = s['url'];
    const parsed = typeof url === 'string' && URL.canParse(url) ? new URL(url) : null;
    if (!parsed || !/^https?:$/.test(parsed.protocol)) throw new WebhookConfigError(`${where} (${id}): url must be an http(s) URL.`);
    let secret: string | undefined;
    if (typeof s['secretEnv'] === 'string') {
      secret = env[s['secretEnv']];
      if (!secret) throw new WebhookConfigError(`${where} (${id}): the environment variable ${s['secretEnv']} named by secretEnv is not set; set it to the shared signing secret.`);
    } else if (typeof s['secret'] === 'string' && s['secret']) {
      secret = s['secret'];
    }
    if (!secret) throw new WebhookConfigError(`${where} (${id}): give "secretEnv" (the name of a variable holding the signing secret) or "secret".`);
    if (secret.length < 16) throw new WebhookConfigError(`${where} (${id}): the signing secret is shorter than 16 characters; use a random one of 32 or more.`);
    const typesRaw = s['types'] ?? [];
    if (!Array.isArray(typesRaw)) throw new WebhookConfigError(`${where} (${id}): types must be an array of event types.`);
    const types = typesRaw.map((t) => {
      if (!isJobEventType(t)) throw new WebhookConfigError(`${where} (${id}): unknown event type ${JSON.stringify(t)}; known: ${JOB_EVENT_TYPES.join(', ')}.`);
      return t;
    });
    const from = s['from'] ?? 'now';
    if (from !== 'now' && from !== 'start') throw new WebhookConfigError(`${where} (${id}): from must be "now" or "start".`);
    return new WebhookSubscription(id, parsed.toString(), secret, types, from, parseEnvironments(s['environments'], where, id), parseDeadLetter(s['deadLetter'], where, id));
  });
}

function parseEnvironments(raw: unknown, where: string, id: string): readonly TrainingEnvironment[] | '*' | null {
  if (raw === undefined || raw === null) return null;
  if (raw === '*') return '*';
  const known = ENVIRONMENTS.join('", "');
  if (!Array.isArray(raw) || raw.length === 0) throw new WebhookConfigError(`${where} (${id}): environments must be "*" or a non-empty array of "${known}".`);
  return raw.map((e) => {
    if (!ENVIRONMENTS.includes(e as TrainingEnvironment)) throw new WebhookConfigError(`${where} (${id}): unknown environment ${JSON.stringify(e)}; known: "${known}" (or "*" for all).`);
    return e as TrainingEnvironment;
  });
}

function parseDeadLetter(raw: unknown, where: string, id: string): DeadLetterPolicy | null {
  if (raw === undefined || raw === null || raw === true) return DEFAULT_DEAD_LETTER;
  if (raw === false) return null;
  if (typeof raw !== 'object' || Array.isArray(raw)) throw new WebhookConfigError(`${where} (${id}): deadLetter must be false or {"afterFailures": n, "maxAgeMinutes": m, "breakerAfter": k}.`);
  const d = raw as Record<string, unknown>;
  const count = (name: string, fallback: number, min: number): number => {
    const v = d[name];
    if (v === undefined) return fallback;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) throw new WebhookConfigError(`${where} (${id}): deadLetter.${name} must be a whole number of at least ${min}.`);
    return v;
  };
  return {
    afterFailures: count('afterFailures', DEFAULT_DEAD_LETTER.afterFailures, 1),
    maxAgeMs: count('maxAgeMinutes', DEFAULT_DEAD_LETTER.maxAgeMs / 60_000, 0) * 60_000,
    breakerAfter: count('breakerAfter', DEFAULT_DEAD_LETTER.breakerAfter, 1),
  };
}

function int(env: NodeJS.ProcessEnv, name: string, fallback: number, min: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < min) throw new WebhookConfigError(`${name}=${JSON.stringify(raw)} must be a whole number of at least ${min}.`);
  return n;
}
