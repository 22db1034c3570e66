/**
 * The engine conformance suite (tools/conformance/README.md). Not part of the
 * root `npx jest` run: it needs the real engine images and random-weight
 * models that tools/conformance/prepare.sh makes, and tens of minutes of CPU.
 * Run it with `npx nx run recipes:conformance`.
 */
module.exports = {
  ...require('../../jest.preset.js'),
  displayName: 'conformance',
  rootDir: __dirname,
  testMatch: ['<rootDir>/**/*.spec.ts'],
  globals: { requiredServices: ['docker', 's3'] },
  // One engine at a time: a 2-core host cannot run two.
  maxWorkers: 1,
};
