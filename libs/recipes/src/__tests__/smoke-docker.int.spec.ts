/**
 * Opt-in end-to-end check of the smoke recipe in a real container:
 *   RECIPES_SMOKE_DOCKER=1 npx jest -c libs/recipes/jest.config.js smoke-docker
 * Builds an image from the recipe's ImageSpec FROM the local Debian base
 * (what recipe-builder does, minus the builder stage), verifies the flag
 * checks, runs the rendered job non-root with a read-only root filesystem and
 * no network, then parses progress and checks the LoRA. Skipped by default:
 * it needs Docker, the local base image and about a minute of CPU.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { getRecipe, parseSafetensorsHeader, sanitizeOutputName, sanitizeTriggerWord, type ProgressEvent } from '../index';

const ENABLED = process.env['RECIPES_SMOKE_DOCKER'] === '1';
const BASE = process.env['RECIPES_SMOKE_BASE'] ?? 'stationthis-local/bookworm-minbase:1';
const TAG = 'stationthis-test/smoke-scratch:recipe';
const maybe = ENABLED ? describe : describe.skip;

maybe('smoke recipe in Docker', () => {
  const recipe = getRecipe('smoke-cpu');
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'recipes-smoke-'));
  afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

  it('builds, trains in under 60 s and writes a valid LoRA', () => {
    const img = recipe.image;
    if (img.engineSource.kind !== 'bundled') throw new Error('smoke must be bundled');
    const ctx = path.join(work, 'ctx');
    fs.mkdirSync(ctx);
    for (const [f, c] of Object.entries(img.engineSource.files)) fs.writeFileSync(path.join(ctx, f), c);
    fs.writeFileSync(
      path.join(ctx, 'Dockerfile'),
      [
        `FROM ${BASE}`,
        `RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${img.runtimeAptPackages.join(' ')} && rm -rf /var/lib/apt/lists/*`,
        `COPY ${Object.keys(img.engineSource.files).join(' ')} ${img.workdir}/`,
        'RUN useradd -u 10001 -m trainer',
        ...Object.entries(img.env ?? {}).map(([k, v]) => `ENV ${k}=${JSON.stringify(v)}`),
        `WORKDIR ${img.workdir}`,
        `HEALTHCHECK CMD ${JSON.stringify(img.healthcheck)}`,
        'LABEL stationthis.test=recipes-smoke-docker',
        'USER 10001',
      ].join('\n') + '\n',
    );
    execFileSync('docker', ['build', '-q', '-t', TAG, ctx], { stdio: 'pipe' });
    for (const fc of img.flagChecks ?? []) {
      const help = execFileSync('docker', ['run', '--rm', TAG, ...fc.argv], { encoding: 'utf8' });
      for (const f of fc.flags) expect(help).toContain(f);
    }

    // A tiny dataset: 6 PNG/JPEG images drawn with Pillow inside the image.
    const dataset = path.join(work, 'dataset');
    const job = path.join(work, 'job');
    const output = path.join(work, 'output');
    for (const d of [dataset, job, output]) fs.mkdirSync(d, { mode: 0o777 });
    fs.chmodSync(dataset, 0o777);
    fs.chmodSync(output, 0o777);
    execFileSync('docker', [
      'run', '--rm', '-v', `${dataset}:/d`, TAG, 'python3', '-c',
      "from PIL import Image, ImageDraw\nfor i in range(6):\n  im = Image.new('RGB', (96, 80), (40*i, 90, 200-30*i)); ImageDraw.Draw(im).ellipse((10+3*i, 10, 70, 60), fill=(255, 200, 0)); im.save('/d/img%d.%s' % (i, 'png' if i % 2 else 'jpg')); open('/d/img%d.txt' % i, 'w').write('sks circle')",
    ]);

    const v = recipe.validate({});
    if (!v.ok) throw new Error('defaults invalid');
    const rendered = recipe.render({
      jobId: 'smokedocker1',
      parameters: v.value,
      triggerWord: sanitizeTriggerWord('sks circle'),
      outputName: sanitizeOutputName('smoke docker'),
      dataset: { imageCount: 6 },
      baseModelFiles: {},
    });
    for (const f of rendered.files) fs.writeFileSync(path.join(job, f.path), f.content);
    const parser = recipe.createProgressParser();
    const events: ProgressEvent[] = [];
    const started = Date.now();
    for (const step of rendered.steps) {
      const r = spawnSync(
        'docker',
        ['run', '--rm', '--cpus', '2', '--read-only', '--tmpfs', '/tmp', '--network', 'none', '--cap-drop', 'ALL', '--security-opt', 'no-new-privileges',
          '-v', `${dataset}:/data/dataset:ro`, '-v', `${job}:/data/job:ro`, '-v', `${output}:/data/output`, TAG, ...step.argv],
        { encoding: 'utf8' },
      );
      events.push(...parser.feed(r.stdout), ...parser.feed(r.stderr));
      expect(r.status).toBe(0);
    }
    const seconds = (Date.now() - started) / 1000;
    expect(seconds).toBeLessThan(60);
    expect(events.filter((e) => e.kind === 'step').pop()).toMatchObject({ step: 100, totalSteps: 100 });
    expect(events.filter((e) => e.kind === 'error')).toEqual([]);
    const header = parseSafetensorsHeader(new Uint8Array(fs.readFileSync(path.join(output, rendered.outputs.lora))));
    expect(recipe.checkOutput(header)).toMatchObject({ ok: true });
    expect(header.metadata['stationthis_trigger_word']).toBe('sks_circle');
    expect(fs.readdirSync(path.join(output, rendered.outputs.samplesDir!))).toHaveLength(2);
  }, 600_000);
});
