/** The real PointsLedger on the database (FerretDB locally) against the port's conformance suite. */
import { ObjectId } from 'mongodb';
import { PointsLedger } from '../src';
import { createPlatformIndexes, openTestDb, platformEntry, resetLedger, type TestDb } from './fixtures';
import { describePointsLedgerPortConformance } from './points-ledger.port.conformance';

let t: TestDb;

describePointsLedgerPortConformance('PointsLedger (real server)', {
  async setUp() {
    t = await openTestDb('points_port');
    await createPlatformIndexes(t.db);
  },
  async fresh() {
    await resetLedger(t.db, []);
    const ledger = new PointsLedger(t.db);
    await ledger.ensureIndexes();
    return {
      ledger,
      fund: async (account, points) => {
        await t.db.collection('credit_ledger').insertOne(platformEntry({ _id: new ObjectId(), account, points, rate: 1 }));
      },
      balance: (account) => ledger.balance({ masterAccountId: account }),
    };
  },
  tearDown: () => t.drop(),
});
