import { ObjectId } from 'mongodb';
import { idForms, isDuplicateKeyError, redactUrl, toObjectId, toObjectIdOrString } from '../src';

describe('redactUrl', () => {
  it.each([
    ['mongodb://user:s3cret@db.example:27017/noema?authSource=admin', 'mongodb://***@db.example:27017/noema?…'],
    ['mongodb://user:s3cret@a:1,b:2/noema?replicaSet=rs', 'mongodb://***@a:1,b:2/noema?…'],
    ['https://bucket.r2.dev/key.png?X-Amz-Signature=abc&X-Amz-Credential=AKIA', 'https://bucket.r2.dev/key.png?…'],
    ['https://token@host.example/path', 'https://***@host.example/path'],
    ['mongodb://127.0.0.1:27017', 'mongodb://127.0.0.1:27017'],
    ['https://example.com/a/b', 'https://example.com/a/b'],
  ])('%s -> %s', (raw, out) => {
    expect(redactUrl(raw)).toBe(out);
    expect(redactUrl(raw)).not.toMatch(/s3cret|Signature=abc|AKIA|token@/);
  });
});

describe('ids', () => {
  const hex = '64b000000000000000000001';
  it('matches both stored forms of a hex id, and a legacy string id as itself', () => {
    expect(idForms(hex)).toEqual([new ObjectId(hex), hex]);
    expect(idForms('legacy-id')).toEqual(['legacy-id']);
    expect(toObjectIdOrString('legacy-id')).toBe('legacy-id');
    expect(toObjectId(hex, 'account')).toEqual(new ObjectId(hex));
    expect(() => toObjectId('nope', 'account')).toThrow(/account "nope" is not a 24-character hex ObjectId/);
  });
});

it('recognises duplicate-key errors only', () => {
  expect(isDuplicateKeyError({ code: 11000 })).toBe(true);
  expect(isDuplicateKeyError({ code: 11001 })).toBe(true);
  expect(isDuplicateKeyError({ code: 26 })).toBe(false);
  expect(isDuplicateKeyError(null)).toBe(false);
  expect(isDuplicateKeyError(new Error('x'))).toBe(false);
});
