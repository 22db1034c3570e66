import { attemptLogKey, attemptLogPrefix, finalSampleKey, jobSpecKey, loraKey, StorageError } from '../src';

const lease = '0b6f9c2e-4a57-4f0e-9a53-3f1d2c7b8e11';

describe('final sample, log and job spec keys', () => {
  it('name the job, the platform attempt and the lease', () => {
    expect(finalSampleKey('job1', 0, lease, 'cat_000010_00.png')).toBe(`training-jobs/job1/samples/attempt-0/${lease}/cat_000010_00.png`);
    expect(attemptLogKey('job1', 2, lease)).toBe(`training-jobs/job1/logs/attempt-2/${lease}.log`);
    expect(jobSpecKey('job1', 1, lease)).toBe(`training-jobs/job1/config/attempt-1/${lease}/job-spec.json`);
  });

  it("list one platform attempt's logs, not another's", () => {
    expect(attemptLogPrefix('job1', 1)).toBe('training-jobs/job1/logs/attempt-1/');
    expect(attemptLogKey('job1', 1, lease).startsWith(attemptLogPrefix('job1', 1))).toBe(true);
    // attempt-1/ is not a prefix of attempt-10/'s keys (the trailing slash).
    expect(attemptLogKey('job1', 10, lease).startsWith(attemptLogPrefix('job1', 1))).toBe(false);
  });

  it('never share a key across platform attempts or claims', () => {
    for (const key of [(pa: number, l: string) => finalSampleKey('j', pa, l, 's.png'), (pa: number, l: string) => attemptLogKey('j', pa, l), (pa: number, l: string) => jobSpecKey('j', pa, l)]) {
      const keys = [key(0, 'lease-a'), key(0, 'lease-b'), key(1, 'lease-a'), key(1, 'lease-b')];
      expect(new Set(keys).size).toBe(4);
    }
  });

  it('leave the model file key as it was', () => {
    expect(loraKey('cat-abc123')).toBe('loras/cat-abc123.safetensors');
  });

  it.each([
    () => finalSampleKey('../x', 0, lease, 's.png'),
    () => finalSampleKey('j', -1, lease, 's.png'),
    () => finalSampleKey('j', 0.5, lease, 's.png'),
    () => finalSampleKey('j', 0, 'a/b', 's.png'),
    () => finalSampleKey('j', 0, lease, '../s.png'),
    () => finalSampleKey('j', 0, lease, 'a/s.png'),
    () => attemptLogKey('j', 0, '..'),
    () => attemptLogPrefix('j', -1),
    () => jobSpecKey('j/k', 0, lease),
  ])('refuse unsafe parts (%#)', (make) => {
    expect(make).toThrow(StorageError);
  });
});
