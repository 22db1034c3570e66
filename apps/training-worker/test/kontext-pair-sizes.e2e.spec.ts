/**
 * Kontext concept pairs whose control image has another shape than its image
 * are refused before the charge: through a real worker, database, ledger and
 * MinIO, the job ends FAILED naming every mismatched pair with both sizes, and
 * the ledger has no entry at all for it (not a charge and its refund). A
 * control that is not an image is refused the same way. A matching concept
 * job passes the prepare step of the worker's own composition.
 */
import { ObjectId } from 'mongodb';
import { ObjectStorage } from '@stationthis/storage';
import { pngOf } from '@stationthis/storage/testing';
import { PrepareStep } from '../src/pipeline/steps/prepare-step';
import { trainingRequestFromJob } from '../src/pipeline/training-request';
import { createHarness, Harness } from './harness';

jest.setTimeout(600_000);

describe('training worker: Kontext concept pairs of different shapes are refused before any charge', () => {
  let h: Harness;
  let storage: ObjectStorage;
  // No image needed: the refused jobs stop in prepare, and the matching one is only prepared.
  beforeAll(async () => {
    h = await createHarness('kontext-pair-sizes');
    storage = h.app.container.resolve(ObjectStorage);
  });
  afterAll(() => h?.close());

  async function upload(name: string, body: Buffer): Promise<string> {
    const key = `${h.prefix}datasets/pairs/${name}`;
    await storage.putObject('datasets', key, body, { contentType: 'image/png' });
    return storage.publicUrl('datasets', key);
  }

  /** A concept dataset: targets of the given sizes, and a completed control set with one control per target. */
  async function conceptDataset(owner: string, name: string, targets: [number, number][], controls: Buffer[]): Promise<string> {
    const images = await Promise.all(targets.map(([w, hgt], i) => upload(`${name}-t${i}.png`, pngOf(w, hgt))));
    const controlUrls = await Promise.all(controls.map((body, i) => upload(`${name}-c${i}.png`, body)));
    const datasetId = await h.seedDataset(owner, { imageUrls: images });
    const controlSet = { _id: new ObjectId(), type: 'control', status: 'completed', config: { prompt: 'make it winter' }, results: controlUrls.map((value) => ({ value })) };
    await h.db.collection('datasets').updateOne({ _id: new ObjectId(datasetId) }, { $set: { embellishments: [controlSet] } });
    return datasetId;
  }

  const conceptJob = (a: { owner: string; wallet: string }, datasetId: string) =>
    h.enqueue({ ownerAccountId: a.owner, walletAddress: a.wallet, datasetId, modelType: 'KONTEXT', baseModel: 'KONTEXT', trainingMode: 'concept', parameters: { steps: 100 } } as never);

  it('a size-mismatched concept job fails with every pair and both sizes named, and no ledger entry; so does a control that is no image', async () => {
    const a = { ...(await h.seedAccount(100_000)), points: 100_000 };
    const mismatched = await conceptDataset(
      a.owner,
      'mismatch',
      [[64, 48], [32, 32], [40, 80], [100, 100]],
      [pngOf(32, 32), pngOf(64, 64), pngOf(80, 40), pngOf(101, 100)], // pairs 1 and 3 differ; pair 4 is within 2 %
    );
    const notImage = await conceptDataset(a.owner, 'html', [[32, 32], [32, 32]], [pngOf(32, 32), Buffer.from('<!doctype html><html>not an image</html>'.padEnd(200))]);
    const sizesJob = await conceptJob(a, mismatched);
    const htmlJob = await conceptJob(a, notImage);
    // This worker has no GPU: CPU test runs make it claim Kontext jobs (it would run the recipe's test run on a CPU slot).
    await h.runWorker({ WORKER_CPU_TEST_RUNS: '1' });

    for (const jobId of [sizesJob, htmlJob]) {
      const job = await h.job(jobId);
      expect({ status: job.status, failureClass: job.failureClass, attempts: job.attempts }).toEqual({ status: 'FAILED', failureClass: 'dataset', attempts: 1 });
      expect(job.failureReason).toMatch(/Nothing was charged\.$/);
      // No entry at all: neither a hold nor a charge and its refund.
      expect(await h.ledger.history({ jobId })).toEqual([]);
      expect(await h.containersFor(jobId)).toEqual([]);
    }
    expect((await h.job(sizesJob)).failureReason).toBe(
      'The dataset cannot be used for FLUX.1 Kontext [dev] LoRA concept training: each control image must have the same shape as its image (aspect ratio within 2 %), ' +
        'because the trainer resizes the control to its image and a different shape would be trained distorted. 2 pairs differ: ' +
        'image 1 is 64×48 but its control is 32×32; image 3 is 40×80 but its control is 80×40. ' +
        'Crop or replace those control images (or regenerate the control set) so each has its image\'s shape, and submit again. Nothing was charged.',
    );
    expect((await h.job(htmlJob)).failureReason).toMatch(/^The dataset cannot be used for .* concept training: Control image 2 \(.*\) is not a JPEG, PNG or WebP file \(starts with an HTML page\)/);
    expect(await h.balance(a.owner, a.wallet)).toBe(a.points);
  });

  it('a concept job whose pairs match passes prepare (in the worker composition, headers read from MinIO)', async () => {
    const a = await h.seedAccount(100_000);
    const datasetId = await conceptDataset(a.owner, 'match', [[64, 48], [32, 32], [48, 96]], [pngOf(128, 96), pngOf(32, 32), pngOf(24, 48)]);
    const jobId = await conceptJob(a, datasetId);
    const prepare = h.app.container.resolve(PrepareStep);
    const p = await prepare.run(trainingRequestFromJob(await h.job(jobId)));
    expect(p.recipe.id).toBe('kontext-lora');
    expect(p.controls?.pairing?.pairs).toHaveLength(3);
    expect(p.controls?.pairing?.prompt).toBe('make it winter');
    expect(await h.ledger.history({ jobId })).toEqual([]);
  });
});
