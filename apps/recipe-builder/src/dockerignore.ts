/**
 * .dockerignore matching with Docker's rules: patterns are matched against the
 * '/'-separated path relative to the context root and against each of its
 * parent folders; the last matching pattern wins; '!' re-includes; '**' spans
 * folders. Enough for packing a context with tar-fs the way the Docker CLI would.
 */
export interface DockerignoreRule {
  negate: boolean;
  regex: RegExp;
}

function globToRegex(pattern: string): RegExp {
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === '*') {
      if (pattern[i + 1] === '*') {
        // '**' matches any number of folders, including none.
        i++;
        if (pattern[i + 1] === '/') {
          i++;
          re += '(?:.*/)?';
        } else {
          re += '.*';
        }
      } else {
        re += '[^/]*';
      }
    } else if (c === '?') {
      re += '[^/]';
    } else if (c === '\\' && i + 1 < pattern.length) {
      re += pattern[++i].replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
    } else {
      re += c.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
    }
  }
  return new RegExp(`^${re}$`);
}

/** Parses .dockerignore text: comments and blank lines dropped, paths cleaned like Docker does. */
export function parseDockerignore(text: string): DockerignoreRule[] {
  const rules: DockerignoreRule[] = [];
  for (const raw of text.split(/\r?\n/)) {
    let line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    let negate = false;
    if (line.startsWith('!')) {
      negate = true;
      line = line.slice(1).trim();
    }
    line = line.replace(/^\/+/, '').replace(/\/+$/, '').replace(/\/\.\//g, '/').replace(/^\.\//, '');
    if (line === '' || line === '.') continue;
    rules.push({ negate, regex: globToRegex(line) });
  }
  return rules;
}

/** Whether `relPath` ('/'-separated, relative to the context) is excluded by the rules. */
export function isExcluded(rules: DockerignoreRule[], relPath: string): boolean {
  const parts = relPath.split('/');
  const candidates = parts.map((_, i) => parts.slice(0, i + 1).join('/'));
  let excluded = false;
  for (const rule of rules) {
    if (candidates.some((c) => rule.regex.test(c))) excluded = !rule.negate;
  }
  return excluded;
}
