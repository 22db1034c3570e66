import { Writable } from 'node:stream';
import { createLogger, redactUrl } from './logger';

describe('logger redaction', () => {
  it('never writes secrets found under known keys', () => {
    const lines: string[] = [];
    const sink = new Writable({ write(chunk, _enc, cb) { lines.push(String(chunk)); cb(); } });
    const log = createLogger('info', sink);
    log.info({ s3: { accessKeyId: 'AKIA-SECRET-ID', secretAccessKey: 'super-secret' }, config: { mongoUrl: 'mongodb://u:pw@h' } }, 'hello');
    const out = lines.join('');
    expect(out).toContain('hello');
    expect(out).not.toContain('super-secret');
    expect(out).not.toContain('AKIA-SECRET-ID');
    expect(out).not.toContain('pw@');
  });

  it('strips passwords from connection strings', () => {
    expect(redactUrl('mongodb+srv://user:p4ss@cluster.example/db')).toBe('mongodb+srv://***@cluster.example/db');
    expect(redactUrl('mongodb://127.0.0.1:27017')).toBe('mongodb://127.0.0.1:27017');
  });
});
