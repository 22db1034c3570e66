import { readFile, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { dockerHarness, sh, type DockerHarness } from './__fixtures__/harness';
import { SecretInEnvironmentError } from './env-guard';
import { ContainerSpecError } from './container-spec';

jest.setTimeout(120_000);

/** Runs `script` in the hardened container and returns its stdout lines. */
async function probe(h: DockerHarness, script: string, extra: Parameters<DockerHarness['spec']>[0] = {}) {
  const lines: string[] = [];
  const r = await h.runtime.run(h.spec({ argv: sh(script), ...extra }), { onLine: (l) => lines.push(l) });
  return { r, lines };
}

describe('inside the hardened container (real engine)', () => {
  let h: DockerHarness;
  let dataset: string;
  let output: string;
  beforeAll(async () => {
    h = await dockerHarness('sandbox');
    dataset = await h.mkdir('dataset');
    output = await h.mkdir('output');
    await writeFile(path.join(dataset, 'img1.txt'), 'a caption');
  });
  afterAll(async () => {
    await h.cleanup();
  });
  afterEach(async () => {
    expect(await h.leftovers()).toEqual([]);
  });

  const mounts = () => [
    { hostPath: dataset, containerPath: '/data', readOnly: true },
    { hostPath: output, containerPath: '/output', readOnly: false },
  ];

  it('has no network: a TCP connection attempt fails', async () => {
    // 1.1.1.1:53 and the Debian mirror: both unreachable without a network namespace with routes.
    const { r, lines } = await probe(
      h,
      'for t in 1.1.1.1/53 deb.debian.org/80 172.17.0.1/2375; do if timeout 3 bash -c "exec 3<>/dev/tcp/${t}" 2>/dev/null; then echo "CONNECTED $t"; else echo "FAILED $t"; fi; done; ls /sys/class/net',
    );
    expect(r.failureClass).toBeNull();
    expect(lines.filter((l) => l.startsWith('CONNECTED'))).toEqual([]);
    expect(lines.filter((l) => l.startsWith('FAILED'))).toHaveLength(3);
    expect(lines).toContain('lo');
    expect(lines).not.toContain('eth0');
  });

  it('can write only to the output mount and tmpfs scratch; the root, the dataset and /dev/shm limits hold', async () => {
    const script = [
      'for p in /output/model.safetensors /tmp/scratch /dev/shm/x /data/new.txt /etc/passwd-x /work-x /usr/local/bin/evil /home/x; do',
      '  if (echo x > "$p") 2>/dev/null; then echo "WROTE $p"; else echo "DENIED $p"; fi',
      'done',
      'cat /data/img1.txt; echo',
      'pwd',
    ].join('\n');
    const { r, lines } = await probe(h, script, { mounts: mounts(), workdir: '/output' });
    expect(r.failureClass).toBeNull();
    expect(lines.filter((l) => l.startsWith('WROTE')).sort()).toEqual(['WROTE /dev/shm/x', 'WROTE /output/model.safetensors', 'WROTE /tmp/scratch']);
    expect(lines.filter((l) => l.startsWith('DENIED'))).toHaveLength(5);
    expect(lines).toContain('a caption');
    expect(lines).toContain('/output');
    expect(await readFile(path.join(output, 'model.safetensors'), 'utf8')).toBe('x\n');
  });

  it('runs as a non-root user with no capabilities and no_new_privs', async () => {
    const { r, lines } = await probe(h, 'id -u; id -g; grep -E "^(CapEff|CapBnd|NoNewPrivs)" /proc/self/status');
    expect(r.failureClass).toBeNull();
    expect(lines[0]).toBe('1000');
    expect(lines[1]).toBe('1000');
    expect(lines).toContain('CapEff:\t0000000000000000');
    expect(lines).toContain('CapBnd:\t0000000000000000');
    expect(lines).toContain('NoNewPrivs:\t1');
  });

  it('sees exactly the spec env: none of the worker’s secrets leak in', async () => {
    const planted = {
      AWS_SECRET_ACCESS_KEY: 'worker-secret-aws-key-123',
      R2_ACCESS_KEY_ID: 'worker-r2-key-id-456',
      MONGO_URL: 'mongodb://user:pw@db:27017/x',
      STATIONTHIS_INTERNAL_TOKEN: 'worker-internal-token-789',
    };
    const saved = { ...process.env };
    Object.assign(process.env, planted);
    try {
      // `env` exec'd directly (no shell adding PWD/SHLVL), under tini.
      const lines: string[] = [];
      const r = await h.runtime.run(
        h.spec({ argv: ['env'], env: { PYTHONUNBUFFERED: '1', TOKENIZERS_PARALLELISM: 'false', HF_HOME: '/tmp/hf' } }),
        { onLine: (l) => lines.push(l) },
      );
      expect(r.failureClass).toBeNull();
      const names = lines.map((l) => l.split('=')[0]).sort();
      // Docker itself adds PATH, HOSTNAME and HOME; everything else comes from the spec.
      expect(names).toEqual(['HF_HOME', 'HOME', 'HOSTNAME', 'PATH', 'PYTHONUNBUFFERED', 'TOKENIZERS_PARALLELISM']);
      const all = lines.join('\n');
      for (const v of Object.values(planted)) expect(all).not.toContain(v);
    } finally {
      for (const k of Object.keys(planted)) delete process.env[k];
      Object.assign(process.env, saved);
    }
  });

  it('refuses a spec that tries to pass a platform credential, before creating anything', async () => {
    await expect(h.runtime.run(h.spec({ env: { AWS_SECRET_ACCESS_KEY: 'x' } }))).rejects.toBeInstanceOf(SecretInEnvironmentError);
    await expect(h.runtime.run(h.spec({ env: { DB: 'mongodb://u:p@h/db' } }))).rejects.toThrow(/MongoDB connection string/);
    await expect(h.runtime.run(h.spec({ user: '0:0' }))).rejects.toBeInstanceOf(ContainerSpecError);
    await expect(h.runtime.run(h.spec({ gpus: { deviceIds: ['all'] } }))).rejects.toThrow(/explicit devices/);
  });

  it('a recipe that opts into the network gets bridge networking and its reason as a label', async () => {
    const lines: string[] = [];
    let labels: Record<string, string> = {};
    let networkMode = '';
    const r = await h.runtime.run(h.spec({ argv: sh('sleep 1; ls /sys/class/net'), network: { reason: 'download gated base model' } }), {
      onLine: (l) => lines.push(l),
      onStarted: (id) => {
        void h.docker
          .getContainer(id)
          .inspect()
          .then((i) => {
            labels = i.Config.Labels;
            networkMode = i.HostConfig.NetworkMode ?? '';
          }, () => undefined);
      },
    });
    expect(r.failureClass).toBeNull();
    expect(lines).toContain('eth0');
    expect(networkMode).toBe('bridge');
    expect(labels['ai.stationthis.network-reason']).toBe('download gated base model');
  });
});
