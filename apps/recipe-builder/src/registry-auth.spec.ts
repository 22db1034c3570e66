import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveRegistryAuth } from './registry-auth';

describe('resolveRegistryAuth', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rb-auth-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('prefers REGISTRY_USERNAME / REGISTRY_PASSWORD', async () => {
    const r = await resolveRegistryAuth('ghcr.io', { REGISTRY_USERNAME: 'bot', REGISTRY_PASSWORD: 'pw' }, join(dir, 'none.json'));
    expect(r).toEqual({ auth: { username: 'bot', password: 'pw', serveraddress: 'ghcr.io' }, source: 'env' });
  });

  it('refuses half of the env pair', async () => {
    await expect(resolveRegistryAuth('ghcr.io', { REGISTRY_USERNAME: 'bot' }, join(dir, 'none.json'))).rejects.toThrow(/set both/);
  });

  it('reads base64 auth and identity tokens from config.json, under any of the usual keys', async () => {
    const path = join(dir, 'config.json');
    await writeFile(
      path,
      JSON.stringify({
        auths: {
          'https://registry.example.com': { auth: Buffer.from('ci:s3cr3t:with:colons').toString('base64') },
          'other.example.com:5000': { identitytoken: 'tok' },
        },
      }),
    );
    expect(await resolveRegistryAuth('registry.example.com', {}, path)).toEqual({
      auth: { username: 'ci', password: 's3cr3t:with:colons', serveraddress: 'registry.example.com' },
      source: 'docker-config',
    });
    expect(await resolveRegistryAuth('other.example.com:5000', {}, path)).toEqual({
      auth: { identitytoken: 'tok', serveraddress: 'other.example.com:5000' },
      source: 'docker-config',
    });
    expect(await resolveRegistryAuth('127.0.0.1:5000', {}, path)).toEqual({ source: 'none' });
  });

  it('answers none without a config file', async () => {
    expect(await resolveRegistryAuth('127.0.0.1:5000', {}, join(dir, 'missing.json'))).toEqual({ source: 'none' });
  });
});
