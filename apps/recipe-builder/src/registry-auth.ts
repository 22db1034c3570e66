/**
 * Registry credentials for pushes: REGISTRY_USERNAME / REGISTRY_PASSWORD from
 * the environment first, then the Docker CLI's config.json (inline `auths`
 * entries, `credHelpers` / `credsStore` helpers). Nothing here logs a secret:
 * callers get back only where the credentials came from.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { RegistryAuth } from './docker-image';

export interface ResolvedAuth {
  auth?: RegistryAuth;
  /** For logs: 'env', 'docker-config', 'credential-helper:<name>' or 'none'. */
  source: string;
}

interface DockerConfigFile {
  auths?: Record<string, { auth?: string; identitytoken?: string; username?: string; password?: string }>;
  credHelpers?: Record<string, string>;
  credsStore?: string;
}

/** Default location of the Docker CLI config, honouring DOCKER_CONFIG. */
export function defaultDockerConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  return join(env.DOCKER_CONFIG ?? join(homedir(), '.docker'), 'config.json');
}

/** Keys under which config.json may list a registry ('https://host/v1/' for Docker Hub, plain host otherwise). */
function configKeys(registry: string): string[] {
  const host = registry.replace(/^https?:\/\//, '').replace(/\/.*$/, '');
  const keys = [registry, host, `https://${host}`, `http://${host}`, `https://${host}/v1/`, `https://${host}/v2/`];
  if (host === 'docker.io' || host === 'index.docker.io' || host === 'registry-1.docker.io') keys.push('https://index.docker.io/v1/');
  return [...new Set(keys)];
}

function runCredentialHelper(helper: string, serverUrl: string): Promise<{ Username: string; Secret: string }> {
  return new Promise((resolve, reject) => {
    const child = execFile(`docker-credential-${helper}`, ['get'], { timeout: 15_000 }, (err, stdout) => {
      if (err) return reject(new Error(`docker-credential-${helper} get failed for ${serverUrl}: ${err.message.split('\n')[0]}`));
      try {
        resolve(JSON.parse(stdout) as { Username: string; Secret: string });
      } catch {
        reject(new Error(`docker-credential-${helper} returned something that is not JSON for ${serverUrl}`));
      }
    });
    child.stdin?.end(serverUrl);
  });
}

export async function resolveRegistryAuth(
  registry: string,
  env: NodeJS.ProcessEnv = process.env,
  dockerConfigPath: string = defaultDockerConfigPath(env),
): Promise<ResolvedAuth> {
  const serveraddress = registry;
  if (env.REGISTRY_USERNAME && env.REGISTRY_PASSWORD) {
    return { auth: { username: env.REGISTRY_USERNAME, password: env.REGISTRY_PASSWORD, serveraddress }, source: 'env' };
  }
  if (env.REGISTRY_USERNAME || env.REGISTRY_PASSWORD) {
    throw new Error('Only one of REGISTRY_USERNAME and REGISTRY_PASSWORD is set; set both, or neither to use ~/.docker/config.json');
  }
  let config: DockerConfigFile;
  try {
    config = JSON.parse(await readFile(dockerConfigPath, 'utf8')) as DockerConfigFile;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { source: 'none' };
    throw new Error(`Cannot read the Docker config at ${dockerConfigPath}: ${(err as Error).message}`, { cause: err });
  }
  const keys = configKeys(registry);
  const helperKey = keys.find((k) => config.credHelpers?.[k]);
  const helper = helperKey ? config.credHelpers?.[helperKey] : undefined;
  if (helper) {
    const c = await runCredentialHelper(helper, helperKey as string);
    return { auth: credentialFromHelper(c, serveraddress), source: `credential-helper:${helper}` };
  }
  const entryKey = keys.find((k) => config.auths?.[k]);
  const entry = entryKey ? config.auths?.[entryKey] : undefined;
  if (entry?.identitytoken) return { auth: { identitytoken: entry.identitytoken, serveraddress }, source: 'docker-config' };
  if (entry?.auth) {
    const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 0) throw new Error(`The auth entry for ${entryKey} in ${dockerConfigPath} is not base64 'user:password'`);
    return { auth: { username: decoded.slice(0, colon), password: decoded.slice(colon + 1), serveraddress }, source: 'docker-config' };
  }
  if (entry?.username && entry.password) return { auth: { username: entry.username, password: entry.password, serveraddress }, source: 'docker-config' };
  if (config.credsStore && entry) {
    const c = await runCredentialHelper(config.credsStore, entryKey as string);
    return { auth: credentialFromHelper(c, serveraddress), source: `credential-helper:${config.credsStore}` };
  }
  return { source: 'none' };
}

function credentialFromHelper(c: { Username: string; Secret: string }, serveraddress: string): RegistryAuth {
  // Helpers return '<token>' as the user name when the secret is an identity token.
  return c.Username === '<token>' ? { identitytoken: c.Secret, serveraddress } : { username: c.Username, password: c.Secret, serveraddress };
}
