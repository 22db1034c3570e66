import type { Collection, CreateIndexesOptions, Document, IndexSpecification } from 'mongodb';

export interface NamedIndex {
  key: Record<string, 1 | -1>;
  name: string;
  unique?: boolean;
}

/**
 * Create only the indexes that do not exist yet (by name). Besides saving
 * round trips, this avoids a FerretDB v1.24 panic ("slice bounds out of
 * range") when createIndexes is sent again for indexes that already exist.
 */
export async function ensureNamedIndexes<T extends Document>(collection: Collection<T>, specs: NamedIndex[]): Promise<void> {
  const existing = new Set<string>();
  try {
    for (const ix of await collection.listIndexes().toArray()) existing.add(String(ix['name']));
  } catch (err) {
    if ((err as { code?: number }).code !== 26) throw err; // NamespaceNotFound: nothing exists yet
  }
  for (const spec of specs) {
    if (existing.has(spec.name)) continue;
    const options: CreateIndexesOptions = { name: spec.name };
    if (spec.unique) options.unique = true;
    await collection.createIndex(spec.key as IndexSpecification, options);
  }
}
