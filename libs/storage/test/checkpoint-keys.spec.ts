import { checkpointLoraKey, checkpointSampleKey, resumeStateKey, resumeStatePrefix, StorageError } from '../src';

const lease = '0b6f9c2e-4a57-4f0e-9a53-3f1d2c7b8e11';

describe('checkpoint and resume-state keys', () => {
  it('name the job, the platform attempt, the zero-padded step and the lease', () => {
    expect(checkpointLoraKey('job1', 0, 40, lease)).toBe(`training-jobs/job1/checkpoints/attempt-0/step-00000040-${lease}.safetensors`);
    expect(checkpointSampleKey('job1', 2, 40, lease, 'x_000040_00.png')).toBe(`training-jobs/job1/checkpoints/attempt-2/step-00000040-${lease}-samples/x_000040_00.png`);
    expect(resumeStateKey('job1', 1, 1200, lease)).toBe(`training-state/job1/attempt-1/step-00001200-${lease}.tar`);
    expect(resumeStateKey('job1', 1, 1200, lease).startsWith(resumeStatePrefix('job1'))).toBe(true);
  });

  it('sort by step as strings', () => {
    const keys = [120, 40, 1000, 80].map((s) => resumeStateKey('j', 0, s, lease));
    expect([...keys].sort()).toEqual([40, 80, 120, 1000].map((s) => resumeStateKey('j', 0, s, lease)));
  });

  it('two leases never share a key for one step', () => {
    expect(checkpointLoraKey('j', 0, 10, 'lease-a')).not.toBe(checkpointLoraKey('j', 0, 10, 'lease-b'));
    expect(resumeStateKey('j', 0, 10, 'lease-a')).not.toBe(resumeStateKey('j', 0, 10, 'lease-b'));
  });

  it.each([
    () => checkpointLoraKey('../x', 0, 1, lease),
    () => checkpointLoraKey('j', -1, 1, lease),
    () => checkpointLoraKey('j', 0, 1.5, lease),
    () => checkpointLoraKey('j', 0, -3, lease),
    () => checkpointLoraKey('j', 0, 1, 'a/b'),
    () => checkpointSampleKey('j', 0, 1, lease, '../secret.png'),
    () => checkpointSampleKey('j', 0, 1, lease, 'a/b.png'),
    () => resumeStateKey('j/k', 0, 1, lease),
    () => resumeStateKey('j', 0, Number.NaN, lease),
    () => resumeStatePrefix(''),
  ])('refuse unsafe parts (%#)', (make) => {
    expect(make).toThrow(StorageError);
  });
});
