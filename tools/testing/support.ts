/**
 * Shared helpers for tests that talk to the real local services.
 * Every suite gets its own database name and bucket prefix and removes them.
 */
import { randomBytes } from 'node:crypto';
import { Db, MongoClient } from 'mongodb';

export interface ServiceEnv {
  mongoUrl: string;
  s3Endpoint: string;
  s3AccessKeyId: string;
  s3SecretAccessKey: string;
  dockerSocket: string;
  registry: string;
  baseImage: string;
}

export function serviceEnv(): ServiceEnv {
  return {
    mongoUrl: process.env.MONGO_URL ?? 'mongodb://127.0.0.1:27017',
    s3Endpoint: process.env.S3_ENDPOINT ?? 'http://127.0.0.1:9000',
    s3AccessKeyId: process.env.S3_ACCESS_KEY_ID ?? 'stationthis',
    s3SecretAccessKey: process.env.S3_SECRET_ACCESS_KEY ?? 'stationthis-local-secret',
    dockerSocket: (process.env.DOCKER_HOST ?? 'unix:///var/run/docker.sock').replace(/^unix:\/\//, ''),
    registry: process.env.REGISTRY_URL ?? '127.0.0.1:5000',
    baseImage: process.env.STATIONTHIS_BASE_IMAGE ?? 'stationthis-local/bookworm-minbase:1',
  };
}

/** A database name unique to one suite run (Latin letters, digits, underscore: FerretDB-safe). */
export function uniqueDbName(suite: string): string {
  return `t_${suite.replace(/[^a-zA-Z0-9]/g, '_').slice(0, 30)}_${randomBytes(4).toString('hex')}`;
}

/** A key prefix unique to one suite run, for the shared buckets. */
export function uniquePrefix(suite: string): string {
  return `test/${suite.replace(/[^a-zA-Z0-9-]/g, '-')}-${randomBytes(4).toString('hex')}/`;
}

export interface TestDb {
  client: MongoClient;
  db: Db;
  drop(): Promise<void>;
}

/** A fresh database on the real MongoDB-protocol server (MONGO_URL), dropped by `drop()`. */
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
