/**
 * ConceptPromptReader against the real MongoDB-protocol server (FerretDB):
 * the prompt of a concept job comes from the first generation linked from
 * the chosen control set that has one (platform DatasetDownloader order),
 * ids stored as ObjectId or hex string, deleted records skipped, and the
 * set's config.prompt only when no generation gives one.
 */
import { MongoClient, ObjectId, type Db } from 'mongodb';
import { resolveControlPairs } from '@stationthis/recipes';
import { openTestDb, serviceEnv, type TestDb } from '../../../../../tools/testing/support';
import { JobFailure } from '../failures';
import { CONCEPT_PROMPT_MAX_CHARS, ConceptPromptReader, GENERATION_OUTPUTS_COLLECTION } from './concept-prompt';

let t: TestDb;
let reader: ConceptPromptReader;

const images = ['https://cdn.example.com/a/1.png', 'https://cdn.example.com/a/2.png', 'https://cdn.example.com/a/3.png'];
const control = (n: number) => `https://cdn.example.com/c/${n}.png`;

function dataset(sets: { id: string; status?: string; links: (ObjectId | string | null)[]; config?: Record<string, unknown> }[]) {
  return {
    images,
    embellishments: sets.map((s) => ({
      _id: s.id,
      type: 'control',
      status: s.status ?? 'completed',
      ...(s.config ? { config: s.config } : {}),
      results: s.links.map((link, i) => ({ value: control(i + 1), generationOutputId: link })),
    })),
  };
}

async function insertOutput(requestPayload: Record<string, unknown> | undefined, extra: Record<string, unknown> = {}): Promise<ObjectId> {
  const _id = new ObjectId();
  // The platform's record carries much more (tool, status, outputs); the reader asks for the prompt fields only.
  await t.db.collection(GENERATION_OUTPUTS_COLLECTION).insertOne({ _id, toolDisplayName: 'kontext-edit', status: 'success', ...(requestPayload ? { requestPayload } : {}), ...extra });
  return _id;
}

beforeAll(async () => {
  t = await openTestDb('concept-prompt');
  reader = new ConceptPromptReader(t.db);
});

afterAll(async () => {
  await t.drop();
});

describe('ConceptPromptReader', () => {
  it('keeps at most CONCEPT_PROMPT_MAX_CHARS of a huge prompt (it becomes every caption)', async () => {
    const huge = await insertOutput({ prompt: 'w'.repeat(CONCEPT_PROMPT_MAX_CHARS * 3) });
    const prompt = await reader.read(dataset([{ id: 'c', links: [huge, null, null] }]));
    expect(prompt).toHaveLength(CONCEPT_PROMPT_MAX_CHARS);
  });

  it('takes the first linked generation that has a prompt, in result order, input_prompt before prompt before text', async () => {
    const noPrompt = await insertOutput({ seed: 1, input_image: control(1) });
    const second = await insertOutput({ prompt: '  make it winter  ', text: 'not this' });
    const third = await insertOutput({ input_prompt: 'not this either' });
    // Stored ids: an ObjectId, a hex string and an ObjectId, as the platform writes either.
    const doc = dataset([{ id: 'c', links: [noPrompt, second.toHexString(), third], config: { prompt: 'config prompt' } }]);
    const prompt = await reader.read(doc);
    expect(prompt).toBe('make it winter');
    const paired = resolveControlPairs(doc, undefined, { generationPrompt: prompt });
    expect(paired.ok && [paired.pairing.prompt, paired.pairing.promptSource]).toEqual(['make it winter', 'generation-output']);

    const both = await insertOutput({ input_prompt: 'the input prompt', prompt: 'the prompt', text: 'the text' });
    expect(await reader.read(dataset([{ id: 'c', links: [null, both, second] }]))).toBe('the input prompt');
    const textOnly = await insertOutput({ text: 'only text' });
    expect(await reader.read(dataset([{ id: 'c', links: [textOnly, second, null] }]))).toBe('only text');
  });

  it('reads the requested control set, not the first one', async () => {
    const a = await insertOutput({ prompt: 'set a' });
    const b = await insertOutput({ prompt: 'set b' });
    const doc = dataset([
      { id: 'a', links: [a, a, a] },
      { id: 'b', links: [b, null, null] },
    ]);
    expect(await reader.read(doc)).toBe('set a');
    expect(await reader.read(doc, 'b')).toBe('set b');
  });

  it('skips deleted records and blank prompts; without any, the set config.prompt applies', async () => {
    const blank = await insertOutput({ input_prompt: '   ', prompt: '' });
    const noPayload = await insertOutput(undefined);
    const deleted = new ObjectId();
    const doc = dataset([{ id: 'c', links: [deleted, blank, noPayload], config: { prompt: 'config prompt' } }]);
    expect(await reader.read(doc)).toBeUndefined();
    const paired = resolveControlPairs(doc, undefined, { generationPrompt: await reader.read(doc) });
    expect(paired.ok && [paired.pairing.prompt, paired.pairing.promptSource]).toEqual(['config prompt', 'control-set-config']);
    // A link after the deleted one still counts.
    const later = await insertOutput({ prompt: 'after the gap' });
    expect(await reader.read(dataset([{ id: 'c', links: [deleted, 'not-an-object-id', later] }]))).toBe('after the gap');
  });

  it('reads nothing for legacy controlImages, a set without links, or a refused request', async () => {
    // A closed client: any query throws (the next test shows it), so undefined proves no query ran.
    const closed = await MongoClient.connect(serviceEnv().mongoUrl);
    const offline = new ConceptPromptReader(closed.db(t.db.databaseName));
    await closed.close();
    expect(await offline.read({ images, controlImages: [{ sourceFilename: '001.png', url: control(1) }] })).toBeUndefined();
    expect(await offline.read(dataset([{ id: 'c', links: [null, null, null] }]))).toBeUndefined();
    const linked = await insertOutput({ prompt: 'unfinished' });
    expect(await offline.read(dataset([{ id: 'run', status: 'in_progress', links: [linked, null, null] }]), 'run')).toBeUndefined();
    await expect(offline.read(dataset([{ id: 'c', links: [linked, null, null] }]))).rejects.toBeInstanceOf(JobFailure);
  });

  it('fails as infrastructure (retried, not charged) when the database cannot be read', async () => {
    const client = await MongoClient.connect(serviceEnv().mongoUrl);
    const db: Db = client.db(t.db.databaseName);
    await client.close();
    const err = await new ConceptPromptReader(db).read(dataset([{ id: 'c', links: [new ObjectId(), null, null] }])).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(JobFailure);
    expect((err as JobFailure).failureClass).toBe('infrastructure');
    expect((err as JobFailure).userMessage).toMatch(/^Could not read the transformation prompt of the control set's generations \(generationOutputs: .+\)\. Nothing was charged\. The job is retried while attempts remain; if this keeps failing, the worker's database user needs read access to generationOutputs\.$/);
  });
});
