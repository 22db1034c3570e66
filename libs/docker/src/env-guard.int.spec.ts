import { assertNoSecrets, secretNameReason, SecretInEnvironmentError } from './env-guard';

describe('assertNoSecrets', () => {
  it.each([
    'AWS_SECRET_ACCESS_KEY', 'AWS_ACCESS_KEY_ID', 'AWS_REGION', 'R2_ACCOUNT_ID', 'R2_ENDPOINT', 'MONGO_URL', 'MONGODB_URI',
    'STATIONTHIS_MONGO_DB', 'HF_TOKEN', 'GITHUB_TOKEN', 'DB_PASSWORD', 'JWT_SECRET', 'OPENAI_API_KEY', 'S3_SECRET',
    'SOME_ACCESS_KEY', 'x.secret', 'registry-password', 'GOOGLE_APPLICATION_CREDENTIALS',
  ])('rejects the credential-like name %s', (name) => {
    expect(secretNameReason(name)).not.toBeNull();
    expect(() => assertNoSecrets({ [name]: 'v' }, {})).toThrow(SecretInEnvironmentError);
  });

  it.each(['PYTHONUNBUFFERED', 'TOKENIZERS_PARALLELISM', 'HF_HOME', 'HF_HUB_OFFLINE', 'NVIDIA_DRIVER_CAPABILITIES', 'TQDM_MININTERVAL', 'KEYFRAMES', 'PATH', 'PWD', 'CUDA_VISIBLE_DEVICES'])(
    'accepts the ordinary name %s',
    (name) => {
      expect(secretNameReason(name)).toBeNull();
      expect(() => assertNoSecrets({ [name]: '1' }, {})).not.toThrow();
    },
  );

  it('rejects values that carry credentials, whatever the name', () => {
    expect(() => assertNoSecrets({ DB: 'mongodb://u:p@h:27017/x' }, {})).toThrow(/MongoDB connection string/);
    expect(() => assertNoSecrets({ DB: 'mongodb+srv://cluster.example.net/x' }, {})).toThrow(/MongoDB connection string/);
    expect(() => assertNoSecrets({ MIRROR: 'https://bob:hunter2@mirror.example/simple' }, {})).toThrow(/embedded password/);
    expect(() => assertNoSecrets({ MIRROR: 'https://mirror.example/simple' }, {})).not.toThrow();
  });

  it('rejects a copy of one of the worker’s own secrets under an innocent name, without echoing it', () => {
    const worker = { R2_SECRET_ACCESS_KEY: 'r2-super-secret-value', HOME: '/root' };
    let err: Error | undefined;
    try {
      assertNoSecrets({ INNOCENT: 'prefix-r2-super-secret-value' }, worker);
    } catch (e) {
      err = e as Error;
    }
    expect(err).toBeInstanceOf(SecretInEnvironmentError);
    expect(err!.message).toMatch(/INNOCENT.*R2_SECRET_ACCESS_KEY/);
    expect(err!.message).not.toContain('r2-super-secret-value');
    // Non-secret worker variables are fine to repeat.
    expect(() => assertNoSecrets({ X: '/root' }, worker)).not.toThrow();
  });

  it('accepts no env at all', () => {
    expect(() => assertNoSecrets(undefined)).not.toThrow();
  });
});
