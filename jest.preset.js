// Shared Jest settings. ts-jest in transpile-only mode (isolatedModules) emits
// decorator metadata, which tsyringe needs; type checking happens in `build`.
const path = require('node:path');

module.exports = {
  testEnvironment: 'node',
  // Resolve workspace libraries to their TypeScript sources, not to dist.
  testEnvironmentOptions: { customExportConditions: ['@stationthis/source', 'node', 'require', 'default'] },
  transform: {
    '^.+\\.ts$': ['ts-jest', { tsconfig: path.join(__dirname, 'tsconfig.spec.json'), diagnostics: false }],
  },
  moduleFileExtensions: ['ts', 'js', 'json'],
  setupFiles: ['reflect-metadata'],
  globalSetup: path.join(__dirname, 'tools/testing/global-setup.js'),
  // A per-project `testTimeout` is ignored when the root config runs all projects; this works in both.
  setupFilesAfterEnv: [path.join(__dirname, 'tools/testing/jest-timeout.js')],
};
