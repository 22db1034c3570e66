// Runs every project's tests from one command (`npx jest`); each project keeps
// its own jest.config.js for `nx test <project>`.
module.exports = {
  projects: ['<rootDir>/libs/*/jest.config.js', '<rootDir>/apps/*/jest.config.js'],
};
