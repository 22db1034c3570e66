/** Tests for libs/points. `requiredServices` is checked by the global setup before any test runs. */
module.exports = {
  ...require('../../jest.preset.js'),
  displayName: 'points',
  rootDir: __dirname,
  testMatch: ['<rootDir>/src/**/*.spec.ts', '<rootDir>/test/**/*.spec.ts'],
  globals: { requiredServices: ['mongo'] },
};
