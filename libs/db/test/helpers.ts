export { openTestDb, type TestDb } from '../../../tools/testing/support';
