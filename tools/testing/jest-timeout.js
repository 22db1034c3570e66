// Default per-test timeout for suites that talk to real services (individual tests may raise it).
jest.setTimeout(60_000);
