/**
 * The container's environment is built from the spec only, never from the
 * worker's process env. This guard is the second line of defence: it refuses
 * anything that looks like a platform credential, so a recipe or a bug cannot
 * hand the worker's keys to untrusted training code.
 */

/** Name segments (split on `_`, `-`, `.`) that mark a credential. */
const SECRET_SEGMENTS = new Set([
  'SECRET', 'SECRETS', 'TOKEN', 'TOKENS', 'PASSWORD', 'PASSWORDS', 'PASSWD', 'CREDENTIAL', 'CREDENTIALS', 'APIKEY',
]);
/** Adjacent segment pairs that mark a credential (ACCESS_KEY, API_KEY, PRIVATE_KEY). */
const SECRET_PAIRS = [['ACCESS', 'KEY'], ['API', 'KEY'], ['PRIVATE', 'KEY'], ['SESSION', 'KEY']];
/** Leading segments of platform service configuration. */
const SECRET_PREFIXES = new Set(['AWS', 'R2', 'S3']);

export class SecretInEnvironmentError extends Error {
  readonly code = 'DOCKER.SECRET_IN_ENV';
  constructor(readonly variable: string, reason: string) {
    super(
      `Refusing to start the container: environment variable "${variable}" ${reason}. ` +
        `Training containers run untrusted code and must not receive platform credentials; ` +
        `remove it from the run spec (stage files or models into a mount instead).`,
    );
    this.name = 'SecretInEnvironmentError';
  }
}

/** Why `name` looks like a credential, or null. Whole segments only: TOKENIZERS_PARALLELISM is fine. */
export function secretNameReason(name: string): string | null {
  const segments = name.toUpperCase().split(/[^A-Z0-9]+/).filter((s) => s !== '');
  if (segments.length === 0) return null;
  if (segments.some((s) => s.startsWith('MONGO'))) return 'names a MongoDB setting';
  if (SECRET_PREFIXES.has(segments[0])) return `is ${segments[0]} service configuration`;
  const hit = segments.find((s) => SECRET_SEGMENTS.has(s));
  if (hit) return `has a credential-like name (${hit})`;
  for (let i = 0; i + 1 < segments.length; i++) {
    for (const [a, b] of SECRET_PAIRS) {
      if (segments[i] === a && segments[i + 1] === b) return `has a credential-like name (${a}_${b})`;
    }
  }
  return null;
}

/** Why `value` looks like a credential, or null. */
export function secretValueReason(value: string, workerEnv: NodeJS.ProcessEnv): string | null {
  if (/mongodb(\+srv)?:\/\//i.test(value)) return 'holds a MongoDB connection string';
  // scheme://user:password@host — credentials embedded in a URL.
  if (/[a-z][a-z0-9+.-]*:\/\/[^\s/@:]+:[^\s/@]+@/i.test(value)) return 'holds a URL with an embedded password';
  // The worker's own secrets under another name.
  for (const [name, secret] of Object.entries(workerEnv)) {
    if (secret && secret.length >= 8 && secretNameReason(name) !== null && value.includes(secret)) {
      return `contains the value of the worker's own ${name}`;
    }
  }
  return null;
}

/**
 * Throws `SecretInEnvironmentError` when any variable in `env` looks like a
 * platform credential, by name (/(SECRET|TOKEN|PASSWORD|ACCESS_KEY|MONGO|R2_|AWS_)/
 * and kin, on whole name segments) or by value (connection strings, URLs with
 * passwords, or a copy of a secret from `workerEnv`). Values are never echoed.
 */
export function assertNoSecrets(env: Record<string, string> | undefined, workerEnv: NodeJS.ProcessEnv = process.env): void {
  for (const [name, value] of Object.entries(env ?? {})) {
    const byName = secretNameReason(name);
    if (byName) throw new SecretInEnvironmentError(name, byName);
    const byValue = secretValueReason(String(value), workerEnv);
    if (byValue) throw new SecretInEnvironmentError(name, byValue);
  }
}
