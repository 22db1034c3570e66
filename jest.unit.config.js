// Pure tests only: every project's specs except *.int.spec.ts and *.e2e.spec.ts,
// with no services required (the global setup probes nothing). Runs in seconds
// on a machine with no Docker, database or S3: `npm run test:unit`.
// `jest.config.js` (all tests, what tools/test-all.sh runs) still includes them.
const path = require('node:path');
const { existsSync, readdirSync } = require('node:fs');

const configs = ['libs', 'apps']
  .flatMap((dir) => readdirSync(path.join(__dirname, dir)).map((name) => path.join(dir, name, 'jest.config.js')))
  .filter((file) => existsSync(path.join(__dirname, file)))
  .sort();

module.exports = {
  projects: configs.map((file) => {
    const config = require(path.join(__dirname, file));
    return {
      ...config,
      displayName: `${config.displayName}:unit`,
      testPathIgnorePatterns: ['/node_modules/', '\\.int\\.spec\\.ts$', '\\.e2e\\.spec\\.ts$'],
      globals: { ...(config.globals ?? {}), requiredServices: [] },
    };
  }),
};
