import { redactUrl } from '@stationthis/common';
import { MongoClient, type Db } from 'mongodb';
import type { InjectionToken } from 'tsyringe';

/** The platform database (`noema` in production). The worker binds it once per process. */
export const MONGO_DB = Symbol('MongoDb') as InjectionToken<Db>;

/**
 * Connect one MongoClient per process. No session or transaction features are
 * used anywhere in this library, so FerretDB v1 and any MongoDB work the same.
 */
export async function connectMongo(url: string, dbName: string): Promise<{ client: MongoClient; db: Db }> {
  const client = new MongoClient(url, { serverSelectionTimeoutMS: 10_000 });
  try {
    await client.connect();
  } catch (err) {
    throw new Error(
      `Could not connect to MongoDB at ${redactUrl(url)}: ${(err as Error).message}. ` +
        'Check that the server is running and MONGO_URL is right.',
      { cause: err },
    );
  }
  return { client, db: client.db(dbName) };
}

