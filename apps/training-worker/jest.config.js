/** Tests for apps/training-worker. `requiredServices` is checked by the global setup before any test runs. */
module.exports = {
  ...require('../../jest.preset.js'),
  displayName: 'training-worker',
  rootDir: __dirname,
  testMatch: ['<rootDir>/src/**/*.spec.ts', '<rootDir>/test/**/*.spec.ts'],
  globals: { requiredServices: ['docker', 'mongo', 's3'] },
};
