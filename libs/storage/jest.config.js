/** Tests for libs/storage. `requiredServices` is checked by the global setup before any test runs. */
module.exports = {
  ...require('../../jest.preset.js'),
  displayName: 'storage',
  rootDir: __dirname,
  testMatch: ['<rootDir>/src/**/*.spec.ts', '<rootDir>/test/**/*.spec.ts'],
  globals: { requiredServices: ['s3'] },
};
