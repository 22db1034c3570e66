import { ObjectId } from 'mongodb';
import { DatasetRepository, LoraModelRepository, UserCoreReader, checkpointFor, slugify } from '../src';
import { openTestDb, type TestDb } from './helpers';

describe('datasets, loraModels and userCore (real server)', () => {
  let t: TestDb;
  beforeAll(async () => {
    t = await openTestDb('db_platform');
  });
  afterAll(() => t.drop());

  it('DatasetRepository.create writes the platform shape; findById takes string or ObjectId', async () => {
    const datasets = new DatasetRepository(t.db);
    const owner = new ObjectId();
    const id = await datasets.create({ name: 'cats', ownerAccountId: owner.toHexString(), images: ['https://x/1.jpg'], captions: ['a cat'] });
    const byString = await datasets.findById(id);
    const byOid = await datasets.findById(new ObjectId(id));
    expect(byString?._id.toHexString()).toBe(id);
    expect(byOid?._id.toHexString()).toBe(id);
    expect(byString?.ownerAccountId).toEqual(owner);
    expect(byString).toMatchObject({ visibility: 'private', status: 'draft', images: ['https://x/1.jpg'] });
    expect(byString?.captionSets?.[0]).toMatchObject({ captions: ['a cat'], isDefault: true });
    expect(await datasets.findById(new ObjectId().toHexString())).toBeNull();
  });

  it('registerTrainedModel is idempotent by training job id, even when raced', async () => {
    const models = new LoraModelRepository(t.db);
    await models.ensureIndexes();
    await models.ensureIndexes();
    const jobId = new ObjectId().toHexString();
    const owner = new ObjectId();
    const input = {
      trainingJobId: jobId,
      masterAccountId: owner.toHexString(),
      datasetId: new ObjectId().toHexString(),
      modelName: 'My Cat LoRA!',
      triggerWord: 'mycat',
      baseModel: 'FLUX.1-dev',
      modelFileUrl: 'https://models.example/my-cat.safetensors',
      storageKey: 'models/x/my-cat.safetensors',
      steps: 1000,
    };
    const results = await Promise.all([1, 2, 3].map(() => models.registerTrainedModel(input)));
    expect(results.filter((r) => r.created)).toHaveLength(1);
    const ids = new Set(results.map((r) => r.model._id.toHexString()));
    expect(ids.size).toBe(1);
    const again = await models.registerTrainedModel({ ...input, modelName: 'other name' });
    expect(again.created).toBe(false);
    expect(again.model.name).toBe('My Cat LoRA!');
    expect(await t.db.collection('loraModels').countDocuments({ 'trainedFrom.trainingId': new ObjectId(jobId) })).toBe(1);

    const m = (await models.findByTrainingJobId(jobId))!;
    expect(m.slug).toMatch(/^my-cat-lora-[0-9a-f]{6}$/);
    expect(m).toMatchObject({
      checkpoint: 'FLUX',
      triggerWords: ['mycat'],
      cognates: [],
      defaultWeight: 1,
      permissionType: 'public',
      visibility: 'public',
      createdBy: owner,
      ownedBy: owner,
      tags: [{ tag: 'trained', source: 'training' }, { tag: 'flux', source: 'training' }],
      publishedTo: { modelFileUrl: input.modelFileUrl, storageKey: input.storageKey },
      moderation: { status: 'approved', reviewedBy: 'AUTO_APPROVED_TRAINING' },
    });
    expect(m.trainedFrom).toMatchObject({ trainingId: new ObjectId(jobId), tool: 'ai-toolkit', steps: 1000 });
    expect((await models.findBySlug(m.slug))?._id).toEqual(m._id);
  });

  it('checkpoint mapping and slugify follow the platform', () => {
    expect(checkpointFor('FLUX-Kontext')).toBe('KONTEXT');
    expect(checkpointFor('sdxl-base')).toBe('SDXL');
    expect(checkpointFor('SD1.5')).toBe('SD1.5');
    expect(checkpointFor('wan2.2')).toBe('WAN');
    expect(slugify('  Ünïcode / Name  ')).toBe('unicode-name');
    expect(slugify('!!!')).toBe('lora');
  });

  it('UserCoreReader finds by string or ObjectId and picks the primary wallet', async () => {
    const users = new UserCoreReader(t.db);
    const _id = new ObjectId();
    await t.db.collection('userCore').insertOne({
      _id,
      wallets: [{ address: '0xAAA' }, { address: '0xBbB', isPrimary: true }],
      profile: { name: 'x' },
    });
    const u = await users.findById(_id.toHexString());
    expect(users.primaryWallet(u)).toBe('0xbbb');
    expect(users.primaryWallet({ wallets: [{ address: '0xC' }] })).toBe('0xc');
    expect(users.primaryWallet({ wallets: [] })).toBeNull();
    expect((await users.findById(_id))?._id).toEqual(_id);
  });
});
