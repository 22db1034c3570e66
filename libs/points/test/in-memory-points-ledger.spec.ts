/** The in-memory fake against the port's conformance suite (no services). */
import { InMemoryPointsLedger } from '../src/testing';
import { describePointsLedgerPortConformance } from './points-ledger.port.conformance';

describePointsLedgerPortConformance('InMemoryPointsLedger', {
  async fresh() {
    const ledger = new InMemoryPointsLedger();
    return {
      ledger,
      fund: async (account, points) => void ledger.deposit(account, points),
      balance: (account) => ledger.balance({ masterAccountId: account }),
    };
  },
});

describe('InMemoryPointsLedger', () => {
  it('records every call in order, for tests of the code that moves points', async () => {
    const ledger = new InMemoryPointsLedger().deposit('a', 50);
    await ledger.charge({ jobId: 'j', masterAccountId: 'a', points: 20, reason: 'q' });
    await ledger.settle({ jobId: 'j', usedPoints: 5, reason: 'done' });
    expect(ledger.calls.map((c) => c.op)).toEqual(['charge', 'settle']);
    expect(await ledger.balance({ masterAccountId: 'a' })).toBe(45); // 50 − 20 charged + 15 refunded
  });
});
