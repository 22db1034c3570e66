/**
 * What `packBuildContext` sends to the daemon, read back from the tar stream:
 * the .dockerignore rules applied the way `docker build` applies them
 * (@balena/dockerignore, moby's rules), Dockerfile and .dockerignore always
 * sent, excluded paths never packed, '!' exceptions re-included. Pure: a temp
 * folder, no Docker engine.
 */
import { chmod, mkdir, mkdtemp, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import * as tar from 'tar-fs';
import { DOCKERIGNORE } from './build-context';
import { packBuildContext } from './docker-image';

/** Every entry of the packed context but its root, in archive order; folders end with '/'. */
function entriesOf(pack: Readable, into: string): Promise<tar.Headers[]> {
  return new Promise((resolve, reject) => {
    const headers: tar.Headers[] = [];
    const extract = tar.extract(into, {
      map: (header) => {
        // The context root itself is packed as '.'; it is not a path the rules judge.
        if (header.name !== '.' && header.name !== './') {
          headers.push({ ...header, name: header.type === 'directory' ? `${header.name.replace(/\/$/, '')}/` : header.name });
        }
        return header;
      },
    });
    extract.on('finish', () => resolve(headers));
    extract.on('error', reject);
    pack.on('error', reject);
    pack.pipe(extract);
  });
}

const names = async (dir: string): Promise<string[]> => (await entriesOf(packBuildContext(dir), `${dir}.unpacked`)).map((h) => h.name);

describe('packBuildContext applies .dockerignore like docker build', () => {
  let root: string;
  let n = 0;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'rb-pack-'));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  /** A context folder holding `files` (relative path -> content) and, unless null, this .dockerignore. */
  async function context(files: Record<string, string>, dockerignore: string | null): Promise<string> {
    const dir = join(root, `ctx-${++n}`);
    await mkdir(dir, { recursive: true });
    if (dockerignore !== null) await writeFile(join(dir, '.dockerignore'), dockerignore);
    for (const [rel, content] of Object.entries(files)) {
      await mkdir(dirname(join(dir, rel)), { recursive: true });
      await writeFile(join(dir, rel), content);
    }
    return dir;
  }

  it('sends exactly what the generated allow-list names', async () => {
    const dir = await context(
      {
        Dockerfile: 'FROM scratch\n',
        'requirements.txt': 'torch\n',
        'rootfs/opt/stationthis/entrypoint.sh': '#!/bin/sh\n',
        'engine/train.py': 'print(1)\n',
        'secrets.env': 'TOKEN=x\n',
        'notes/todo.md': '- x\n',
      },
      DOCKERIGNORE,
    );
    expect((await names(dir)).sort()).toEqual([
      '.dockerignore', 'Dockerfile', 'engine/', 'engine/train.py', 'requirements.txt',
      'rootfs/', 'rootfs/opt/', 'rootfs/opt/stationthis/', 'rootfs/opt/stationthis/entrypoint.sh',
    ]);
  });

  it('always sends Dockerfile and .dockerignore, even when the rules exclude them', async () => {
    const dir = await context({ Dockerfile: 'FROM scratch\n', 'a.txt': 'a\n' }, 'Dockerfile\n.dockerignore\n*\n');
    expect(await names(dir)).toEqual(['.dockerignore', 'Dockerfile']);
  });

  it('follows Docker rules: parents match, last match wins, ** spans folders, comments and a leading / ignored', async () => {
    const dir = await context(
      {
        Dockerfile: 'FROM scratch\n',
        'node_modules/x/index.js': '',
        'a/b/c.log': '',
        'c.log': '',
        'keep/important.log': '',
        'keep/other.log': '',
        'tmp/file': '',
        'src/tmp.ts': '',
        '#notacomment': '',
      },
      '# comment\n\nnode_modules\n**/*.log\n!keep/important.log\n/tmp/\n',
    );
    const packed = await names(dir);
    expect(packed).toEqual(expect.arrayContaining(['keep/important.log', 'src/tmp.ts', '#notacomment']));
    for (const gone of ['node_modules/', 'node_modules/x/index.js', 'a/b/c.log', 'c.log', 'keep/other.log', 'tmp/', 'tmp/file']) {
      expect(packed).not.toContain(gone);
    }
  });

  it('walks into an excluded folder for files a "!" exception re-includes, and sends no folder that holds none', async () => {
    const dir = await context(
      { Dockerfile: 'FROM scratch\n', 'deep/x/keep.txt': 'k', 'deep/x/drop.txt': 'd', 'other/keep.txt': 'o' },
      '*\n!deep/**/keep.txt\n',
    );
    const packed = await names(dir);
    expect(packed).toEqual(['.dockerignore', 'Dockerfile', 'deep/', 'deep/x/', 'deep/x/keep.txt']);
  });

  it('sends the whole folder without a .dockerignore', async () => {
    const dir = await context({ Dockerfile: 'FROM scratch\n', 'a/b.txt': 'b' }, null);
    expect(await names(dir)).toEqual(['Dockerfile', 'a/', 'a/b.txt']);
  });

  it('packs the same files into the same archive: sorted entries, owners and times cleared', async () => {
    const dir = await context({ Dockerfile: 'FROM scratch\n', 'b.txt': 'b', 'a.txt': 'a' }, null);
    await utimes(join(dir, 'a.txt'), new Date('2020-01-01'), new Date('2020-01-01'));
    await chmod(join(dir, 'b.txt'), 0o600);
    const headers = await entriesOf(packBuildContext(dir), `${dir}.unpacked`);
    expect(headers.map((h) => h.name)).toEqual(['Dockerfile', 'a.txt', 'b.txt']);
    for (const h of headers) expect(h).toMatchObject({ uid: 0, gid: 0, uname: '', gname: '', mtime: new Date(0) });
  });
});
