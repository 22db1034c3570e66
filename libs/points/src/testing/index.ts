/**
 * Test doubles of this library's ports, for other projects' unit tests
 * (`@stationthis/points/testing`). Each is held to the real adapter by the
 * conformance suite in libs/points/test.
 */
export { InMemoryPointsLedger, type InMemoryLedgerCall } from './in-memory-points-ledger';
