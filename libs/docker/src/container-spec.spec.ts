import type { ContainerRunSpec } from './container-runtime';
import { buildContainerCreateOptions, ContainerSpecError, validateRunSpec } from './container-spec';

const base = (o: Partial<ContainerRunSpec> = {}): ContainerRunSpec => ({
  image: 'img:1',
  argv: ['python', 'train.py'],
  workdir: '/output',
  mounts: [{ hostPath: '/srv/jobs/j1/output', containerPath: '/output', readOnly: false }],
  gpus: null,
  labels: { jobId: 'j1', attemptId: 'a1', workerId: 'w1' },
  deadlineMs: 3_600_000,
  stallTimeoutMs: 600_000,
  logFilePath: '/srv/jobs/j1/a1.log',
  ...o,
});

describe('validateRunSpec', () => {
  it.each<[string, Partial<ContainerRunSpec>, RegExp]>([
    ['empty argv', { argv: [] }, /argv/],
    ['relative workdir', { workdir: 'out' }, /workdir/],
    ['relative host path', { mounts: [{ hostPath: 'data', containerPath: '/data', readOnly: true }] }, /hostPath/],
    ['mount over /', { mounts: [{ hostPath: '/x', containerPath: '/', readOnly: true }] }, /other than \//],
    ['duplicate targets', { mounts: [{ hostPath: '/a', containerPath: '/d', readOnly: true }, { hostPath: '/b', containerPath: '/d/', readOnly: true }] }, /two mounts/],
    ['root user', { user: 'root' }, /root/],
    ['uid 0', { user: '0:1000' }, /root/],
    ['empty gpu list', { gpus: { deviceIds: [] } }, /gpus: null/],
    ['network without reason', { network: { reason: ' ' } }, /reason/],
    ['missing worker label', { labels: { jobId: 'j', attemptId: 'a', workerId: '' } }, /labels/],
    ['zero deadline', { deadlineMs: 0 }, /deadlineMs/],
    ['timer overflow', { stallTimeoutMs: 30 * 24 * 3600 * 1000 }, /stallTimeoutMs/],
    ['relative log path', { logFilePath: 'x.log' }, /logFilePath/],
    ['fractional memory', { memoryBytes: 1.5 }, /memoryBytes/],
  ])('rejects %s', (_name, o, re) => {
    expect(() => validateRunSpec(base(o))).toThrow(ContainerSpecError);
    expect(() => validateRunSpec(base(o))).toThrow(re);
  });

  it('accepts a well-formed spec', () => {
    expect(() => validateRunSpec(base({ gpus: { deviceIds: ['GPU-1'] }, user: '1234:1234' }))).not.toThrow();
  });
});

describe('buildContainerCreateOptions', () => {
  it('defaults to no network, non-root, read-only root with /tmp scratch, explicit env only', () => {
    const o = buildContainerCreateOptions(base({ env: { A: '1' } }));
    expect(o).toMatchObject({ User: '1000:1000', Env: ['A=1'], Cmd: ['python', 'train.py'], StopTimeout: 30, Tty: false });
    expect(o.HostConfig).toMatchObject({
      NetworkMode: 'none',
      ReadonlyRootfs: true,
      Tmpfs: { '/tmp': 'rw,nosuid,nodev,size=2g' },
      CapDrop: ['ALL'],
      SecurityOpt: ['no-new-privileges'],
      Mounts: [{ Type: 'bind', Source: '/srv/jobs/j1/output', Target: '/output', ReadOnly: false }],
    });
    expect(o.HostConfig?.DeviceRequests).toBeUndefined();
    expect(o.name).toMatch(/^st-j1-a1-[0-9a-f]{6}$/);
  });
});
