import type { Collection, CreateIndexesOptions, Document, Filter, IndexSpecification, OptionalUnlessRequiredId, WithId } from 'mongodb';

export interface NamedIndex {
  key: Record<string, 1 | -1>;
  name: string;
  unique?: boolean;
}

/** IndexOptionsConflict, IndexKeySpecsConflict: another process created it meanwhile, or the platform has it under another name. */
const INDEX_EXISTS_CODES = new Set([85, 86]);
/** NamespaceNotFound: the collection does not exist yet, so neither does any index. */
const NAMESPACE_NOT_FOUND = 26;

/**
 * Create the indexes not present yet, by name and by key: an equivalent index
 * the platform made under another name is kept. Checking first also saves
 * round trips and avoids a FerretDB v1.24 panic ("slice bounds out of range")
 * when createIndexes is re-sent for existing indexes.
 */
export async function ensureNamedIndexes<T extends Document>(collection: Collection<T>, specs: NamedIndex[]): Promise<void> {
  let existing: Document[] = [];
  try {
    existing = await collection.listIndexes().toArray();
  } catch (err) {
    if ((err as { code?: number }).code !== NAMESPACE_NOT_FOUND) throw err;
  }
  const sameKey = (a: Document | undefined, b: Document) => a !== undefined && JSON.stringify(Object.entries(a)) === JSON.stringify(Object.entries(b));
  for (const spec of specs) {
    if (existing.some((ix) => ix['name'] === spec.name || sameKey(ix['key'] as Document | undefined, spec.key))) continue;
    const options: CreateIndexesOptions = { name: spec.name };
    if (spec.unique) options.unique = true;
    try {
      await collection.createIndex(spec.key as IndexSpecification, options);
    } catch (err) {
      if (!INDEX_EXISTS_CODES.has((err as { code?: number }).code ?? 0)) throw err;
    }
  }
}

/** E11000: a unique index refused the write. The idempotency of every insert-once write rests on this. */
export function isDuplicateKeyError(err: unknown): boolean {
  const code = (err as { code?: number } | null)?.code;
  return code === 11000 || code === 11001;
}

/**
 * Insert `doc` once under its `_id`: the first writer creates it, a later or
 * concurrent one gets the stored document back (`created: false`). The `_id`
 * index is the only uniqueness FerretDB v1 enforces atomically.
 */
export async function insertOnce<T extends Document & { _id: unknown }>(collection: Collection<T>, doc: T): Promise<{ doc: T; created: boolean }> {
  try {
    await collection.insertOne(doc as OptionalUnlessRequiredId<T>);
    return { doc, created: true };
  } catch (err) {
    if (!isDuplicateKeyError(err)) throw err;
    const stored = (await collection.findOne({ _id: doc._id } as Filter<T>)) as WithId<T> | null;
    if (!stored) throw err;
    return { doc: stored as T, created: false };
  }
}
