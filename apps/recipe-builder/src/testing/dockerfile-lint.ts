/**
 * Test-side checks of a generated Dockerfile, done on the parse tree of a real
 * Dockerfile parser (dockerfile-ast) rather than on the renderer's own idea of
 * what it wrote. Returns every problem found; empty means the file passes.
 */
import { DockerfileParser, type Instruction } from 'dockerfile-ast';
import { parseImageRef, SECRET_NAME } from '../image-spec-check';

export interface LintExpectations {
  recipeId: string;
  recipeVersion: string;
  engineCommit: string;
  engineRepository: string;
}

/** Credential shapes that must never appear in a Dockerfile or a build context. */
export const SECRET_PATTERNS: Array<{ name: string; regex: RegExp }> = [
  { name: 'AWS access key id', regex: /\b(?:AKIA|ASIA)[0-9A-Z]{16}\b/ },
  { name: 'AWS/R2 secret key assignment', regex: /(?:aws_secret_access_key|secret_access_key|S3_SECRET|R2_SECRET)\s*[=:]\s*\S+/i },
  { name: 'R2 secret (64 hex) near a key name', regex: /(?:secret|r2)[^\n]{0,40}\b[0-9a-f]{64}\b/i },
  { name: 'MongoDB URI with credentials', regex: /mongodb(?:\+srv)?:\/\/[^\s:/@]+:[^\s@/]+@/i },
  { name: 'URL with user:password', regex: /\b[a-z][a-z0-9+.-]*:\/\/[^\s:/@]+:[^\s@/]+@/i },
  { name: 'private key block', regex: /-----BEGIN [A-Z ]*PRIVATE KEY-----/ },
  { name: 'GitHub token', regex: /\bgh[pousr]_[A-Za-z0-9]{30,}\b/ },
  { name: 'Hugging Face token', regex: /\bhf_[A-Za-z0-9]{30,}\b/ },
  { name: 'local MinIO secret', regex: /stationthis-local-secret/ },
  { name: 'docker auth blob', regex: /"auth"\s*:\s*"[A-Za-z0-9+/=]{8,}"/ },
];

export function scanForSecrets(text: string): string[] {
  return SECRET_PATTERNS.filter((p) => p.regex.test(text)).map((p) => p.name);
}

function propertiesOf(instruction: Instruction): Array<{ name: string; value: string | null }> {
  const withProps = instruction as unknown as { getProperties?: () => Array<{ getName(): string; getValue(): string | null }> };
  return (withProps.getProperties?.() ?? []).map((p) => ({ name: p.getName(), value: p.getValue() }));
}

export function lintDockerfile(text: string, expect: LintExpectations): string[] {
  const problems: string[] = [];
  const df = DockerfileParser.parse(text);
  const initialArgs = new Map<string, string>();
  for (const arg of df.getInitialARGs()) {
    const prop = arg.getProperty();
    if (prop) initialArgs.set(prop.getName(), prop.getValue() ?? '');
  }
  const resolve = (s: string) => s.replace(/\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?/g, (_, name: string) => initialArgs.get(name) ?? '');

  // Multi-stage.
  const froms = df.getFROMs();
  if (froms.length < 2) problems.push(`expected a multi-stage build, found ${froms.length} FROM`);
  const stageNames = froms.map((f) => f.getBuildStage());

  // Pinned bases, never 'latest'.
  for (const from of froms) {
    const raw = from.getImage() ?? '';
    const ref = resolve(raw);
    if (stageNames.includes(ref)) continue;
    const parsed = parseImageRef(ref);
    if (!ref) problems.push(`FROM ${raw} resolves to nothing (missing ARG default)`);
    else if (!parsed.tag) problems.push(`FROM ${ref} has no tag`);
    else if (parsed.tag === 'latest') problems.push(`FROM ${ref} uses 'latest'`);
  }
  if (/(^|[^A-Za-z0-9_.-]):latest\b/m.test(text)) problems.push("the text mentions ':latest'");

  // Final stage: instructions after the last FROM.
  const instructions = df.getInstructions();
  const lastFromLine = froms.length > 0 ? froms[froms.length - 1].getRange().start.line : -1;
  const finalStage = instructions.filter((i) => i.getRange().start.line >= lastFromLine);

  const users = finalStage.filter((i) => i.getKeyword() === 'USER');
  const lastUser = users.length > 0 ? (users[users.length - 1].getArgumentsContent() ?? '').trim() : '';
  const [user, group] = lastUser.split(':');
  if (!lastUser) problems.push('the final stage never sets USER (it would run as root)');
  else if (user === 'root' || user === '0' || group === '0' || group === 'root') problems.push(`the final stage runs as '${lastUser}', which is root`);

  const healthchecks = finalStage.filter((i) => i.getKeyword() === 'HEALTHCHECK');
  const hcText = healthchecks.length > 0 ? (healthchecks[healthchecks.length - 1].getArgumentsContent() ?? '') : '';
  if (!/\bCMD\b/.test(hcText)) problems.push('the final stage has no HEALTHCHECK CMD');

  const labels = new Map<string, string>();
  for (const i of finalStage.filter((x) => x.getKeyword() === 'LABEL')) {
    for (const p of propertiesOf(i)) labels.set(p.name, p.value ?? '');
  }
  const wantLabels: Record<string, string> = {
    'ai.stationthis.recipe.id': expect.recipeId,
    'ai.stationthis.recipe.version': expect.recipeVersion,
    'ai.stationthis.engine.commit': expect.engineCommit,
    'ai.stationthis.engine.repository': expect.engineRepository,
    'org.opencontainers.image.version': expect.recipeVersion,
  };
  for (const [k, v] of Object.entries(wantLabels)) {
    if (labels.get(k) !== v) problems.push(`label ${k} is '${labels.get(k) ?? '(missing)'}', expected '${v}'`);
  }

  // No secrets: ARG names, ENV keys, and credential shapes anywhere.
  for (const i of instructions) {
    if (i.getKeyword() === 'ARG' || i.getKeyword() === 'ENV') {
      for (const p of propertiesOf(i)) {
        if (SECRET_NAME.test(p.name)) problems.push(`${i.getKeyword()} ${p.name} looks like a secret`);
      }
    }
  }
  for (const hit of scanForSecrets(text)) problems.push(`the Dockerfile contains a ${hit}`);
  return problems;
}
