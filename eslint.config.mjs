import nx from '@nx/eslint-plugin';

export default [
  ...nx.configs['flat/base'],
  ...nx.configs['flat/typescript'],
  { ignores: ['**/dist', '**/node_modules', '**/.state', '**/build', 'tools/**/*.js'] },
  {
    files: ['**/*.ts'],
    rules: {
      '@nx/enforce-module-boundaries': [
        'error',
        {
          enforceBuildableLibDependency: true,
          allow: [],
          depConstraints: [
            // Apps compose libraries; nothing imports an app.
            { sourceTag: 'type:app', onlyDependOnLibsWithTags: ['type:lib'] },
            { sourceTag: 'type:lib', onlyDependOnLibsWithTags: ['type:lib'] },
            // libs/recipes is pure: other platform apps import it, so it may use no adapter.
            { sourceTag: 'kind:pure', onlyDependOnLibsWithTags: ['kind:pure'] },
            // Adapters own one concern each and never import each other; they share the utility tier.
            { sourceTag: 'kind:adapter', onlyDependOnLibsWithTags: ['kind:pure', 'kind:util'] },
            // The utility tier (libs/common) imports no other library.
            { sourceTag: 'kind:util', onlyDependOnLibsWithTags: [] },
          ],
        },
      ],
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      // tsyringe needs runtime class references in constructor parameters.
      '@typescript-eslint/consistent-type-imports': 'off',
      // New in ESLint 10's recommended set (ADR 0007): an error rethrown in words keeps its cause.
      'preserve-caught-error': 'error',
      'no-useless-assignment': 'error',
    },
  },
  {
    // Tests may import the shared harness in tools/testing by relative path (it is not a library);
    // the boundaries above still hold for all production code.
    files: ['**/*.spec.ts', '**/test/**/*.ts', '**/__fixtures__/**/*.ts'],
    rules: { '@nx/enforce-module-boundaries': 'off' },
  },
];
