/** Tests for libs/common: pure, no services. */
module.exports = {
  ...require('../../jest.preset.js'),
  displayName: 'common',
  rootDir: __dirname,
  testMatch: ['<rootDir>/test/**/*.spec.ts'],
  globals: { requiredServices: [] },
};
