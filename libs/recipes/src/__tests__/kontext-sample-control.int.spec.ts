/**
 * The Kontext `sample-control` step in the real training image: the rendered
 * step and the script the recipe ships run as the worker runs them (non-root,
 * read-only root and control mount, no network), and the copy they write fits
 * resolution² with the control's shape. Needs Docker and the kontext-lora
 * image of this recipe version (apps/recipe-builder/build/image-manifest.json,
 * `nx run recipe-builder:build-images`); skipped, saying so, without them.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CONTAINER_PATHS, findManifestEntry, getRecipe, parseImageManifestText, type Recipe, type RenderedJob } from '../index';
import { KONTEXT_SAMPLE_CONTROL, type KontextParameters } from '../recipes/kontext';
import { renderInput } from '../__fixtures__/helpers';

const recipe = getRecipe('kontext-lora') as unknown as Recipe<KontextParameters>;
const MANIFEST = path.join(__dirname, '..', '..', '..', '..', 'apps', 'recipe-builder', 'build', 'image-manifest.json');

/** The built image of this recipe version, when the manifest names one Docker has. */
function kontextImage(): string | undefined {
  try {
    const entry = findManifestEntry(parseImageManifestText(fs.readFileSync(MANIFEST, 'utf8'), MANIFEST), recipe.id, recipe.version);
    if (!entry) return undefined;
    const ref = `${entry.image}:${entry.tag}`;
    execFileSync('docker', ['image', 'inspect', ref], { stdio: 'ignore' });
    return ref;
  } catch {
    return undefined;
  }
}

const IMAGE = kontextImage();
if (!IMAGE) console.warn(`kontext-sample-control: skipped, no local image for ${recipe.id}@${recipe.version} in ${MANIFEST} (build it with nx run recipe-builder:build-images)`);
const maybe = IMAGE ? describe : describe.skip;

/** Width and height from a PNG's IHDR. */
function pngSize(file: string): { width: number; height: number } {
  const b = fs.readFileSync(file);
  expect(b.subarray(1, 4).toString('latin1')).toBe('PNG');
  return { width: b.readUInt32BE(16), height: b.readUInt32BE(20) };
}

maybe('kontext sample-control step in the training image', () => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'kontext-sample-control-'));
  const control = path.join(work, 'control');
  afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

  beforeAll(() => {
    fs.mkdirSync(control, { mode: 0o777 });
    fs.chmodSync(control, 0o777);
    // Controls drawn with the image's own Pillow: a large JPEG, an RGBA PNG, a thin greyscale PNG and a file that is no image.
    const draw = [
      'from PIL import Image',
      "Image.new('RGB', (6000, 4000), (200, 30, 30)).save('/d/big.jpg', quality=90)",
      "Image.new('RGBA', (3000, 1000), (0, 0, 255, 128)).save('/d/rgba.png')",
      "Image.new('L', (10, 300), 128).save('/d/thin.png')",
      "Image.new('RGB', (640, 480), (1, 2, 3)).save('/d/small.png')",
      "open('/d/broken.png', 'wb').write(b'not an image')",
    ].join('\n');
    execFileSync('docker', ['run', '--rm', '--network', 'none', '-v', `${control}:/d`, IMAGE!, 'python', '-c', draw], { stdio: 'pipe' });
  }, 120_000);

  /** Renders a concept job whose first control is `name` and runs its first step as the worker would. */
  function runStep(name: string, resolution: number): { status: number | null; stdout: string; stderr: string; output: string; job: RenderedJob } {
    const v = recipe.validate({ trainingMode: 'concept', resolution });
    if (!v.ok) throw new Error(JSON.stringify(v.issues));
    const job = recipe.render({ ...renderInput(recipe, v.value), controlImages: [name, 'other.png'] });
    const step = job.steps[0]!;
    expect(step.name).toBe('sample-control');
    const dir = fs.mkdtempSync(path.join(work, 'run-'));
    const jobDir = path.join(dir, 'job');
    const output = path.join(dir, 'output');
    fs.mkdirSync(jobDir);
    fs.mkdirSync(output, { mode: 0o777 });
    fs.chmodSync(output, 0o777);
    for (const f of job.files) fs.writeFileSync(path.join(jobDir, f.path), f.content, { mode: 0o644 });
    const run = spawnSync(
      'docker',
      [
        'run', '--rm', '--network', 'none', '--read-only', '--tmpfs', '/tmp', '--user', '1000:1000', '--cap-drop', 'ALL', '--security-opt', 'no-new-privileges',
        '-v', `${control}:${CONTAINER_PATHS.control}:ro`,
        '-v', `${jobDir}:${CONTAINER_PATHS.job}:ro`,
        '-v', `${output}:${CONTAINER_PATHS.output}`,
        IMAGE!,
        ...step.argv,
      ],
      { encoding: 'utf8', timeout: 120_000 },
    );
    return { status: run.status, stdout: run.stdout, stderr: run.stderr, output: path.join(output, path.relative(CONTAINER_PATHS.output, KONTEXT_SAMPLE_CONTROL)), job };
  }

  it.each([
    ['big.jpg', 768, { width: 928, height: 624 }],
    ['big.jpg', 512, { width: 624, height: 416 }],
    ['rgba.png', 768, { width: 1328, height: 432 }],
    ['thin.png', 768, { width: 16, height: 288 }],
    // Already small enough: kept (sides cut to multiples of 16, as musubi crops them).
    ['small.png', 768, { width: 640, height: 480 }],
  ])('scales %s to fit %i² with its shape', (name, resolution, expected) => {
    const r = runStep(name, resolution);
    expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
    expect(r.stdout).toContain(`sample control: ${name}`);
    const size = pngSize(r.output);
    expect(size).toEqual(expected);
    expect(size.width * size.height).toBeLessThanOrEqual(Math.max(resolution ** 2, 16 * 300));
    expect(size.width % 16 + (size.height % 16)).toBe(0);
    // The previews point at the copy.
    expect(r.job.files.find((f) => f.path === 'sample_prompts.txt')!.content).toContain(`--ci ${KONTEXT_SAMPLE_CONTROL}\n`);
  }, 120_000);

  it('fails with a clear message for a control that is not an image, and for a missing one', () => {
    const broken = runStep('broken.png', 768);
    expect(broken.status).toBe(1);
    expect(broken.stderr).toMatch(/^sample control: cannot read the control image \/data\/control\/broken\.png: /);
    expect(fs.existsSync(broken.output)).toBe(false);
    const missing = runStep('missing.png', 768);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/cannot read the control image \/data\/control\/missing\.png: .*No such file/);
  }, 120_000);
});
