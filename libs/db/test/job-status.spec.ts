import { allowedFrom, assertTransition, canTransition, InvalidTransitionError, JOB_STATUSES, TERMINAL_STATUSES } from '../src';

describe('job status transitions', () => {
  it('follows the platform lifecycle', () => {
    expect(canTransition('QUEUED', 'PROVISIONING')).toBe(true);
    expect(canTransition('PROVISIONING', 'RUNNING')).toBe(true);
    expect(canTransition('RUNNING', 'FINALIZING')).toBe(true);
    expect(canTransition('FINALIZING', 'COMPLETED')).toBe(true);
    expect(canTransition('RUNNING', 'COMPLETED')).toBe(false);
    expect(canTransition('QUEUED', 'RUNNING')).toBe(false);
  });

  it('lets nothing leave COMPLETED or CANCELLED; FAILED only back to QUEUED (platform retry)', () => {
    for (const to of JOB_STATUSES) {
      expect(canTransition('COMPLETED', to)).toBe(false);
      expect(canTransition('CANCELLED', to)).toBe(false);
      expect(canTransition('FAILED', to)).toBe(to === 'QUEUED');
    }
    expect(TERMINAL_STATUSES).toEqual(['COMPLETED', 'FAILED', 'CANCELLED']);
  });

  it('throws a typed error that names the allowed moves', () => {
    expect(() => assertTransition('QUEUED', 'COMPLETED')).toThrow(InvalidTransitionError);
    expect(() => assertTransition('QUEUED', 'COMPLETED')).toThrow(/PROVISIONING, CANCELLED, FAILED/);
  });

  it('allowedFrom is the inverse of the table', () => {
    expect(allowedFrom('COMPLETED')).toEqual(['FINALIZING']);
    expect(allowedFrom('CANCELLED').sort()).toEqual(['FINALIZING', 'PROVISIONING', 'QUEUED', 'RUNNING']);
  });
});
