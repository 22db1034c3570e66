/**
 * Golden files of rendered configs and commands for each recipe at its
 * defaults and at edge values. Regenerate after an intended change with
 *   UPDATE_GOLDEN=1 npx jest -c libs/recipes/jest.config.js render
 * and review the diff.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CONTAINER_PATHS, getRecipe, listRecipes, type Recipe, type RenderedJob } from '../index';
import { edgeParameters, renderInput } from '../__fixtures__/helpers';

const GOLDEN_DIR = path.join(__dirname, '..', '__fixtures__', 'golden');
const UPDATE = process.env['UPDATE_GOLDEN'] === '1';

function golden(name: string, rendered: RenderedJob): void {
  const file = path.join(GOLDEN_DIR, `${name}.json`);
  const text = JSON.stringify(rendered, null, 2) + '\n';
  if (UPDATE || !fs.existsSync(file)) {
    fs.writeFileSync(file, text);
    return;
  }
  expect(text).toBe(fs.readFileSync(file, 'utf8'));
}

interface Case {
  name: string;
  recipe: string;
  parameters: (r: Recipe) => Record<string, unknown>;
  dataset?: { imageCount: number; videoCount?: number };
  /** RenderInput.controlImages (what the worker wrote into the control mount). */
  controlImages?: string[];
}

const CASES: Case[] = [];
for (const r of listRecipes({ includeInternal: true })) {
  CASES.push({ name: `${r.id}-defaults`, recipe: r.id, parameters: () => ({}) });
  CASES.push({ name: `${r.id}-min`, recipe: r.id, parameters: (x) => ({ ...edgeParameters(x, 'min'), ...(r.id === 'wan-lora' ? { frameCount: 1 } : {}) }) });
  CASES.push({ name: `${r.id}-max`, recipe: r.id, parameters: (x) => ({ ...edgeParameters(x, 'max'), ...(r.id === 'wan-lora' ? { frameCount: 81, blocksToSwap: 29 } : {}) }) });
}
CASES.push({ name: 'wan-lora-video-only', recipe: 'wan-lora', parameters: () => ({}), dataset: { imageCount: 0, videoCount: 6 } });
CASES.push({ name: 'wan-lora-mixed', recipe: 'wan-lora', parameters: () => ({}), dataset: { imageCount: 12, videoCount: 4 } });
CASES.push({ name: 'wan-lora-wan22-high', recipe: 'wan-lora', parameters: () => ({ task: 't2v-A14B', wan22Expert: 'high-noise', fp8Scaled: true }) });
CASES.push({ name: 'kontext-lora-concept', recipe: 'kontext-lora', parameters: () => ({ trainingMode: 'concept' }) });
CASES.push({ name: 'kontext-lora-concept-previews', recipe: 'kontext-lora', parameters: () => ({ trainingMode: 'concept' }), controlImages: ['img_0001.webp', 'img_0002.png'] });
CASES.push({ name: 'flux-lora-24gb-low-vram', recipe: 'flux-lora', parameters: () => ({ blocksToSwap: 16, optimizer: 'Adafactor', multiResolution: false, resolution: 768 }) });

function inputOf(recipe: Recipe, parameters: Record<string, unknown>, c: Case) {
  return { ...renderInput(recipe, parameters, c.dataset), ...(c.controlImages ? { controlImages: c.controlImages } : {}) };
}

describe.each(CASES)('render golden: $name', (c) => {
  const recipe = getRecipe(c.recipe);
  const validated = recipe.validate(c.parameters(recipe));
  it('validates and renders exactly as the golden file', () => {
    if (!validated.ok) throw new Error(JSON.stringify(validated.issues));
    const rendered = recipe.render(inputOf(recipe, validated.value, c));
    golden(c.name, rendered);
  });
  it('uses only container paths and argv arrays', () => {
    if (!validated.ok) return;
    const rendered = recipe.render(inputOf(recipe, validated.value, c));
    for (const step of rendered.steps) {
      expect(step.argv.length).toBeGreaterThan(1);
      for (const arg of step.argv) {
        expect(typeof arg).toBe('string');
        // No shell metacharacters anywhere (argv only; the trainer's -c snippets live in the image, not here).
        expect(arg).not.toMatch(/[;&|`$<>\n]/);
        if (arg.startsWith('/')) {
          const roots = [...Object.values(CONTAINER_PATHS), recipe.image.workdir];
          expect(roots.some((root) => arg === root || arg.startsWith(`${root}/`))).toBe(true);
        }
      }
    }
    expect(rendered.steps.filter((s) => s.reportsTrainingProgress)).toHaveLength(1);
    expect(rendered.steps[rendered.steps.length - 1]!.name).toBe('train');
    expect(rendered.outputs.lora).toBe('my_lora_v1.safetensors');
  });
  it('emits only flags listed in the image flag checks (verified against the pinned engine at build time)', () => {
    if (!validated.ok) return;
    const rendered = recipe.render(inputOf(recipe, validated.value, c));
    const checks = recipe.image.flagChecks ?? [];
    for (const step of rendered.steps) {
      const scriptIndex = step.argv.findIndex((a) => a.endsWith('.py'));
      const script = step.argv[scriptIndex]!;
      if (script.startsWith(`${CONTAINER_PATHS.job}/`)) {
        // A script the recipe ships in its own rendered files, not the engine's: it must be one of them; its recipe's tests cover its arguments.
        expect(rendered.files.map((f) => `${CONTAINER_PATHS.job}/${f.path}`)).toContain(script);
        continue;
      }
      const check = checks.find((fc) => fc.argv.includes(script));
      expect(check).toBeDefined();
      const flags = step.argv.slice(scriptIndex + 1).filter((a) => a.startsWith('--'));
      for (const f of flags) expect(check!.flags).toContain(f);
      const launcherFlags = step.argv.slice(0, scriptIndex).filter((a) => a.startsWith('--'));
      if (launcherFlags.length > 0) {
        const acc = checks.find((fc) => fc.argv[0] === 'accelerate');
        for (const f of launcherFlags) expect(acc!.flags).toContain(f);
      }
    }
  });
});

describe('rendered TOML files parse with Python tomllib (the engines use toml/tomllib)', () => {
  const python = (() => {
    try {
      execFileSync('python3', ['-c', 'import tomllib'], { stdio: 'ignore' });
      return 'python3';
    } catch {
      return undefined;
    }
  })();
  const maybe = python ? it : it.skip;
  maybe('every golden TOML parses and keeps user text intact', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'recipes-toml-'));
    try {
      const recipe = getRecipe('smoke-cpu');
      const v = recipe.validate({});
      if (!v.ok) throw new Error('smoke defaults invalid');
      const tricky = { ...renderInput(recipe, v.value), triggerWord: 'a.b-c_d' };
      const files = [...CASES.map((c) => path.join(GOLDEN_DIR, `${c.name}.json`))].flatMap((f) => (JSON.parse(fs.readFileSync(f, 'utf8')) as RenderedJob).files);
      files.push(...recipe.render(tricky).files);
      let n = 0;
      for (const file of files.filter((f) => f.path.endsWith('.toml'))) {
        const p = path.join(dir, `f${n++}.toml`);
        fs.writeFileSync(p, file.content);
        const out = execFileSync(python!, ['-c', 'import sys, tomllib, json; print(json.dumps(tomllib.load(open(sys.argv[1], "rb"))))', p], { encoding: 'utf8' });
        expect(JSON.parse(out)).toBeTruthy();
      }
      expect(n).toBeGreaterThan(10);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('render guards', () => {
  const recipe = getRecipe('sdxl-lora');
  const v = recipe.validate({});
  if (!v.ok) throw new Error('defaults invalid');
  it('rejects an unsanitised trigger word or output name', () => {
    expect(() => recipe.render({ ...renderInput(recipe, v.value), triggerWord: '--output_dir=/etc' })).toThrow(/sanitizeTriggerWord/);
    expect(() => recipe.render({ ...renderInput(recipe, v.value), outputName: '../evil' })).toThrow(/sanitizeOutputName/);
    expect(() => recipe.render({ ...renderInput(recipe, v.value), jobId: 'a b' })).toThrow(/jobId/);
  });
  it('rejects invalid parameters even when the caller skipped validate()', () => {
    expect(() => recipe.render({ ...renderInput(recipe, v.value), parameters: { ...v.value, steps: 5 } })).toThrow(/parameters\.steps/);
  });
  it('rejects base-model file names that escape the models mount', () => {
    expect(() => recipe.render({ ...renderInput(recipe, v.value), baseModelFiles: { checkpoint: '../../etc/passwd' } })).toThrow(/relative path/);
  });
  it('falls back to the recipe weight file names when baseModelFiles lacks a role', () => {
    const r = recipe.render({ ...renderInput(recipe, v.value), baseModelFiles: {} });
    expect(r.steps[0]!.argv).toContain('/data/models/sd_xl_base_1.0.safetensors');
  });
});

describe('engine-specific rendering facts', () => {
  it('FLUX trains with bf16, guidance 1.0, cached TE outputs and latents, and lora_flux', () => {
    const r = getRecipe('flux-lora');
    const v = r.validate({});
    if (!v.ok) throw new Error('invalid');
    const argv = r.render(renderInput(r, v.value)).steps[0]!.argv;
    const after = (flag: string) => argv[argv.indexOf(flag) + 1];
    expect(argv.filter((a) => a === 'bf16')).toHaveLength(2); // accelerate + script
    expect(argv).not.toContain('fp16'.replace('fp16', 'fp16_mixed'));
    expect(after('--mixed_precision')).toBe('bf16');
    expect(after('--guidance_scale')).toBe('1');
    expect(argv).toEqual(expect.arrayContaining(['--cache_latents', '--cache_text_encoder_outputs', '--network_train_unet_only']));
    expect(after('--network_module')).toBe('networks.lora_flux');
    expect(after('--network_dim')).toBe('32');
    expect(after('--network_alpha')).toBe('32');
  });
  it('WAN renders cache-latents, cache-text-encoder, then train', () => {
    const r = getRecipe('wan-lora');
    const v = r.validate({});
    if (!v.ok) throw new Error('invalid');
    const job = r.render(renderInput(r, v.value, { imageCount: 3, videoCount: 2 }));
    expect(job.steps.map((s) => s.name)).toEqual(['cache-latents', 'cache-text-encoder', 'train']);
    expect(job.steps[0]!.argv[1]).toMatch(/wan_cache_latents\.py$/);
    expect(job.steps[1]!.argv[1]).toMatch(/wan_cache_text_encoder_outputs\.py$/);
    expect(job.files[0]!.content).toContain('video_directory');
    expect(job.files[0]!.content).toContain('target_frames = [33]');
  });
  it('WAN 2.2 uses fp16 (the repackaged experts are fp16) and the expert timestep range', () => {
    const r = getRecipe('wan-lora');
    const v = r.validate({ task: 't2v-A14B' });
    if (!v.ok) throw new Error('invalid');
    const argv = r.render(renderInput(r, v.value)).steps[2]!.argv;
    expect(argv[argv.indexOf('--mixed_precision') + 1]).toBe('fp16');
    expect(argv.slice(argv.indexOf('--min_timestep'), argv.indexOf('--min_timestep') + 5)).toEqual(['--min_timestep', '0', '--max_timestep', '875', '--preserve_distribution_shape']);
  });
});
