/** The account cannot pay; nothing was written. */
export class InsufficientPointsError extends Error {
  readonly code = 'INSUFFICIENT_POINTS';
  constructor(
    readonly balance: number,
    readonly needed: number,
    readonly jobId: string,
  ) {
    super(
      `Insufficient points for training job ${jobId}: the quote is ${needed} points but the balance is ${balance}. ` +
        'Nothing was charged; the user must add points and submit again.',
    );
    this.name = 'InsufficientPointsError';
  }
}

/** Another caller holds the account's charge lock for longer than we were willing to wait. */
export class MovementBusyError extends Error {
  constructor(readonly key: string) {
    super(`Points lock ${key} is held by another process; try again after it expires.`);
    this.name = 'MovementBusyError';
  }
}

/** A call that contradicts an earlier movement with the same key (e.g. charging a job already settled). */
export class MovementConflictError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MovementConflictError';
  }
}
