/** The smoke trainer's .py source and the text embedded in the recipe must match. */
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { getRecipe, SMOKE_TRAINER_PY, SMOKE_TRAINER_SHA256 } from '../index';

const PY = path.join(__dirname, '..', 'smoke', 'trainer.py');

describe('smoke trainer embedding', () => {
  it('smoke-trainer.generated.ts matches src/smoke/trainer.py (run tools/generate-smoke-trainer.js)', () => {
    const source = fs.readFileSync(PY, 'utf8');
    expect(SMOKE_TRAINER_PY).toBe(source);
    expect(SMOKE_TRAINER_SHA256).toBe(createHash('sha256').update(source, 'utf8').digest('hex'));
    execFileSync(process.execPath, [path.join(__dirname, '..', '..', 'tools', 'generate-smoke-trainer.js'), '--check'], { stdio: 'pipe' });
  });
  it('ships the trainer as a bundled file and labels the image with its content hash', () => {
    const recipe = getRecipe('smoke-cpu');
    expect(recipe.image.engineSource).toEqual({ kind: 'bundled', files: { 'train_smoke.py': SMOKE_TRAINER_PY } });
    expect(recipe.engine.commit).toBe(SMOKE_TRAINER_SHA256.slice(0, 40));
    expect(recipe.image.runtimeAptPackages).toEqual(['python3', 'python3-torch', 'python3-numpy', 'python3-tqdm', 'python3-pil']);
    expect(recipe.gpu.count).toBe(0);
  });
  it('is valid Python that parses without torch installed', () => {
    let python: string | undefined;
    try {
      execFileSync('python3', ['--version'], { stdio: 'ignore' });
      python = 'python3';
    } catch {
      return; // no Python on this machine; the image build checks it instead
    }
    execFileSync(python, ['-c', 'import ast, sys; ast.parse(open(sys.argv[1]).read())', PY]);
  });
});
