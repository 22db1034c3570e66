import { MongoClient, type Db } from 'mongodb';
// Shared test support sits outside every Nx project (the preamble says: import it by relative path).
// eslint-disable-next-line @nx/enforce-module-boundaries
import { serviceEnv, uniqueDbName } from '../../../tools/testing/support';

export interface TestDb {
  client: MongoClient;
  db: Db;
  drop(): Promise<void>;
}

/** A fresh database on the real local MongoDB-protocol server, dropped by `drop()`. */
export async function openTestDb(suite: string): Promise<TestDb> {
  const client = await MongoClient.connect(serviceEnv().mongoUrl);
  const db = client.db(uniqueDbName(suite));
  return {
    client,
    db,
    async drop() {
      await db.dropDatabase().catch(() => undefined);
      await client.close();
    },
  };
}
