/**
 * An operator-only recipe (FLUX.2 klein, off the menu until RECIPES_ENABLED
 * names it) is enabled per worker. A worker that does not offer it must leave
 * its jobs queued for the workers that do, not claim and fail them, while a
 * model type no recipe knows is still claimed and failed with the list of
 * supported types. Through a real worker and database; nothing is charged.
 */
import { createHarness, Harness } from './harness';

jest.setTimeout(300_000);

describe('training worker: operator-only recipes are claimed only where enabled', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await createHarness('operator-only');
  });
  afterAll(() => h?.close());

  it('leaves a FLUX.2 klein job queued on a worker without RECIPES_ENABLED, and fails an unknown type', async () => {
    const a = await h.seedAccount(1000);
    const datasetId = await h.seedDataset(a.owner);
    const klein = await h.enqueue({ ownerAccountId: a.owner, walletAddress: a.wallet, datasetId, modelType: 'FLUX2_KLEIN_4B', baseModel: 'FLUX2_KLEIN_4B' } as never);
    const unknown = await h.enqueue({ ownerAccountId: a.owner, walletAddress: a.wallet, datasetId, modelType: 'SD9', baseModel: 'SD9' } as never);

    await h.runWorker({ RECIPES_ENABLED: '' });

    const failed = await h.job(unknown);
    expect(failed.status).toBe('FAILED');
    expect(failed.failureReason).toMatch(/unknown model type "SD9"/i);
    const waiting = await h.job(klein);
    expect({ status: waiting.status, attempts: waiting.attempts ?? 0 }).toEqual({ status: 'QUEUED', attempts: 0 });
    expect(await h.ledger.history({ jobId: klein })).toEqual([]);
    expect(await h.balance(a.owner, a.wallet)).toBe(1000);
  });
});
