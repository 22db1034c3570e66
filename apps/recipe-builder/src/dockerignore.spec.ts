import { DOCKERIGNORE } from './build-context';
import { isExcluded, parseDockerignore } from './dockerignore';

describe('.dockerignore matching', () => {
  it('keeps exactly what the generated allow-list names', () => {
    const rules = parseDockerignore(DOCKERIGNORE);
    expect(isExcluded(rules, 'Dockerfile')).toBe(false);
    expect(isExcluded(rules, 'requirements.txt')).toBe(false);
    expect(isExcluded(rules, 'rootfs/opt/stationthis/entrypoint.sh')).toBe(false);
    expect(isExcluded(rules, 'rootfs')).toBe(false);
    expect(isExcluded(rules, 'secrets.env')).toBe(true);
    expect(isExcluded(rules, 'notes/todo.md')).toBe(true);
  });

  it('follows Docker rules: parents match, last match wins, ** spans folders, comments ignored', () => {
    const rules = parseDockerignore('# comment\n\nnode_modules\n**/*.log\n!keep/important.log\n/tmp/\n');
    expect(isExcluded(rules, 'node_modules/x/index.js')).toBe(true);
    expect(isExcluded(rules, 'a/b/c.log')).toBe(true);
    expect(isExcluded(rules, 'c.log')).toBe(true);
    expect(isExcluded(rules, 'keep/important.log')).toBe(false);
    expect(isExcluded(rules, 'tmp/file')).toBe(true);
    expect(isExcluded(rules, 'src/tmp.ts')).toBe(false);
  });
});
