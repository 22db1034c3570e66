/**
 * Engine conformance: each production recipe's rendered steps, run by the real
 * engine in the real image under the worker's real sandbox, on random-weight
 * base models in the exact files the loaders read (tools/conformance/models).
 *
 *   npx nx run recipes:conformance        (prepare.sh first: images, models, dataset)
 *   CONFORMANCE_ONLY=sdxl-lora,wan-lora   run a subset
 *
 * Per recipe it asserts: every step exits 0; the recipe's progress parser read
 * step, total and loss from the engine's own output; the LoRA passes the
 * recipe's output checks; every caption the engine read names the trigger
 * word; and every LoRA tensor key resolves to a weight of the base checkpoint
 * under ComfyUI's LoRA key rules (0 unmatched). The report (wall time, peak
 * container memory, substitutions) goes to .state/conformance/report.json.
 */
import { promises as fsp, existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { DockerContainerRuntime, createDockerClient } from '@stationthis/docker';
import {
  captionHasTrigger,
  getRecipe,
  requiredWeights,
  resolveComfyLoraKeys,
  summarizeDataset,
  trainingCaption,
  applyArgvSubstitutions,
  testRunWeights,
  type ProgressEvent,
  type Recipe,
} from '@stationthis/recipes';
import { createS3Client, DatasetFetcher, loadStorageConfig, ObjectStorage, type PlatformDatasetDoc } from '@stationthis/storage';
import { stepContainerSpec } from '../../apps/training-worker/src/pipeline/step-container';
import { readSafetensorsHeader } from '../../apps/training-worker/src/pipeline/safetensors-file';
import { serviceEnv, uniquePrefix } from '../testing/support';
import { CASES, TRIGGER, type ConformanceCase } from './cases';

const REPO = path.resolve(__dirname, '../..');
const STATE = path.join(REPO, '.state', 'conformance');
// The models are ~35 GB and deterministic (spec-hash sidecars): one copy per machine, shared by every clone.
const CACHE = process.env['STATIONTHIS_CACHE_DIR'] ?? path.join(process.env['HOME'] ?? '/root', '.cache', 'stationthis');
const MODELS = process.env['CONFORMANCE_MODELS_DIR'] ?? path.join(CACHE, 'conformance', 'models');
const DATASET_MEDIA = process.env['CONFORMANCE_DATASET_DIR'] ?? path.join(STATE, 'dataset');
const WORK = path.join(STATE, 'runs');
const MANIFEST = process.env['IMAGE_MANIFEST_PATH'] ?? path.join(REPO, 'apps/recipe-builder/build/image-manifest.json');
const MEMORY_BYTES = Number(process.env['CONFORMANCE_MEMORY_BYTES'] ?? 20 * 1024 ** 3);
const ONLY = (process.env['CONFORMANCE_ONLY'] ?? '').split(',').filter(Boolean);

interface StepReport {
  name: string;
  argvChanges: string[];
  wallSeconds: number;
  peakRssBytes: number | null;
  exitCode: number | null;
}
interface CaseReport {
  recipe: string;
  image: string;
  steps: StepReport[];
  progress: { step: number; totalSteps: number; loss?: number } | null;
  lora: { file: string; bytes: number; tensors: number; comfyMatched: number; comfyUnmatched: string[] } | null;
  captionsSeen: Record<string, string>;
  modelOverrides: string[];
}
const report: CaseReport[] = [];

/** The image the worker would run for this recipe version: the manifest's pushed digest. */
function imageFor(recipe: Recipe<unknown>): string {
  const m = JSON.parse(readFileSync(MANIFEST, 'utf8')) as { images: Record<string, { repoDigest?: string }> };
  const ref = m.images[`${recipe.id}@${recipe.version}`]?.repoDigest;
  if (!ref) throw new Error(`no image for ${recipe.id}@${recipe.version} in ${MANIFEST}; run tools/conformance/prepare.sh`);
  return ref;
}

/**
 * Peak resident memory of a running container: the cgroup v1 `total_rss`
 * (anonymous memory), polled once a second. Not `max_usage_in_bytes`, which
 * counts the page cache of the multi-GB model files and so sits at the limit.
 */
function watchPeakMemory(): { onStarted(id: string): void; stop(): number | null } {
  let peak: number | null = null;
  let timer: NodeJS.Timeout | undefined;
  return {
    onStarted(id: string) {
      const file = `/sys/fs/cgroup/memory/docker/${id}/memory.stat`;
      timer = setInterval(() => {
        try {
          const rss = /^total_rss (\d+)$/m.exec(readFileSync(file, 'utf8'));
          if (rss) peak = Math.max(peak ?? 0, Number(rss[1]));
        } catch {
          /* container gone, or cgroup v2: keep what we have */
        }
      }, 1000);
    },
    stop() {
      if (timer) clearInterval(timer);
      return peak;
    },
  };
}

const s = serviceEnv();
const storageConfig = loadStorageConfig({ S3_ENDPOINT: s.s3Endpoint, S3_ACCESS_KEY_ID: s.s3AccessKeyId, S3_SECRET_ACCESS_KEY: s.s3SecretAccessKey });
const s3 = createS3Client(storageConfig);
const storage = new ObjectStorage(storageConfig, s3);
const fetcher = new DatasetFetcher(storage);
const runtime = new DockerContainerRuntime(createDockerClient());
const prefix = uniquePrefix('conformance');

afterAll(async () => {
  await storage.deletePrefix('datasets', prefix).catch(() => undefined);
  s3.destroy();
  await fsp.mkdir(STATE, { recursive: true });
  const out = path.join(STATE, 'report.json');
  const previous = existsSync(out) ? (JSON.parse(readFileSync(out, 'utf8')) as { cases?: CaseReport[] }).cases ?? [] : [];
  const merged = [...previous.filter((p) => !report.some((r) => r.recipe === p.recipe)), ...report];
  await fsp.writeFile(out, JSON.stringify({ at: new Date().toISOString(), cases: merged }, null, 2));
});

async function platformDataset(c: ConformanceCase): Promise<PlatformDatasetDoc> {
  const urls: string[] = [];
  for (const item of c.dataset) {
    const key = `${prefix}${c.recipeId}/${item.file}`;
    await storage.putObject('datasets', key, await fsp.readFile(path.join(DATASET_MEDIA, item.file)));
    urls.push(storage.publicUrl('datasets', key));
  }
  // The platform's legacy caption set, parallel to `images` ('' = no caption).
  return { name: `conformance ${c.recipeId}`, images: urls, captionSets: [{ _id: 'cs1', isDefault: true, status: 'completed', captions: c.dataset.map((d) => d.caption) }] };
}

const cases = CASES.filter((c) => ONLY.length === 0 || ONLY.includes(c.recipeId));

describe.each(cases.map((c) => [c.recipeId, c] as const))('%s conformance', (_id, c) => {
  const recipe = getRecipe(c.recipeId) as Recipe<unknown>;
  const run = path.join(WORK, c.recipeId);
  const folders = { datasetDir: path.join(run, 'dataset'), jobDir: path.join(run, 'job'), outputDir: path.join(run, 'output'), logFile: path.join(run, 'engine.log') };
  const events: ProgressEvent[] = [];
  const caseReport: CaseReport = { recipe: c.recipeId, image: '', steps: [], progress: null, lora: null, captionsSeen: {}, modelOverrides: [] };
  let outputs: { lora: string } = { lora: '' };

  beforeAll(async () => {
    await fsp.rm(run, { recursive: true, force: true });
    for (const d of [folders.jobDir, folders.outputDir]) await fsp.mkdir(d, { recursive: true });
    // The container runs as uid 1000: the worker makes its folders readable and the output writable the same way.
    await fsp.chmod(folders.outputDir, 0o777);
    report.push(caseReport);
  });

  it('runs every rendered step in the real image under the worker sandbox, each exiting 0', async () => {
    const validated = recipe.validate(c.parameters);
    if (!validated.ok) throw new Error(`case parameters invalid: ${JSON.stringify(validated.issues)}`);
    const fetched = await fetcher.fetch(await platformDataset(c), folders.datasetDir, {
      captionSetId: 'cs1',
      allowVideo: recipe.datasetRequirements.allowVideo,
      captionFor: (caption) => trainingCaption(caption, TRIGGER),
    });
    for (const f of await fsp.readdir(folders.datasetDir)) await fsp.chmod(path.join(folders.datasetDir, f), 0o644);
    await fsp.chmod(folders.datasetDir, 0o755);

    const testWeights = testRunWeights(recipe, requiredWeights(recipe, validated.value as never));
    caseReport.modelOverrides.push(...testWeights.applied);
    const weights = testWeights.weights.map((w) => ({ fileName: w.fileName, path: path.join(MODELS, w.fileName), role: w.role }));
    for (const w of weights) if (!existsSync(w.path)) throw new Error(`missing conformance model ${w.path}; run tools/conformance/prepare.sh`);
    const rendered = recipe.render({
      jobId: `conf${c.recipeId.replace(/[^a-z0-9]/g, '')}`,
      parameters: validated.value,
      triggerWord: TRIGGER,
      outputName: `conformance_${c.recipeId.replace(/-/g, '_')}`,
      dataset: summarizeDataset(fetched.images),
      baseModelFiles: Object.fromEntries(weights.map((w) => [w.role, w.fileName])),
    });
    outputs = rendered.outputs;
    for (const f of rendered.files) await fsp.writeFile(path.join(folders.jobDir, f.path), f.content, { mode: 0o644 });
    const image = imageFor(recipe);
    caseReport.image = image;
    await runtime.ensureImage(image);

    for (const step of rendered.steps) {
      const { argv, applied } = applyArgvSubstitutions(step.argv, recipe.testRun?.substitutions ?? []);
      const parser = recipe.createProgressParser();
      const memory = watchPeakMemory();
      const started = Date.now();
      const result = await runtime.run(
        stepContainerSpec({
          image,
          recipe,
          step: { name: step.name, argv },
          folders: { ...folders, weights },
          jobId: 'conformance',
          gpuDeviceIds: [],
          memoryBytes: MEMORY_BYTES,
          pidsLimit: 4096,
          labels: { jobId: `conformance-${c.recipeId}`, attemptId: 'a1', workerId: 'conformance' },
          deadlineMs: 3 * 60 * 60 * 1000,
          stallTimeoutMs: 45 * 60 * 1000,
        }),
        {
          onStarted: (id) => memory.onStarted(id),
          onLine: (line) => {
            for (const ev of parser.feed(line)) if (step.reportsTrainingProgress) events.push(ev);
          },
        },
      );
      caseReport.steps.push({ name: step.name, argvChanges: applied, wallSeconds: Math.round((Date.now() - started) / 100) / 10, peakRssBytes: memory.stop(), exitCode: result.exitCode });
      if (result.failureClass) {
        throw new Error(`step ${step.name} failed (${result.failureClass}, exit ${result.exitCode}): ${result.failureMessage ?? ''}\n${result.lastLines.slice(-40).join('\n')}`);
      }
      expect(result.exitCode).toBe(0);
    }
  }, 4 * 60 * 60 * 1000);

  it("the recipe's progress parser read step, total and loss from the engine's output", () => {
    const steps = events.filter((e): e is Extract<ProgressEvent, { kind: 'step' }> => e.kind === 'step');
    expect(steps.length).toBeGreaterThan(0);
    const last = steps[steps.length - 1];
    caseReport.progress = { step: last.step, totalSteps: last.totalSteps, loss: last.loss };
    expect(last.totalSteps).toBe(2);
    expect(last.step).toBe(2);
    expect(steps.some((e) => typeof e.loss === 'number' && Number.isFinite(e.loss))).toBe(true);
    expect(events.filter((e) => e.kind === 'error')).toEqual([]);
  });

  it('every caption the engine read names the trigger word, and every item has one', async () => {
    const files = await fsp.readdir(folders.datasetDir);
    const media = files.filter((f) => !f.endsWith('.txt'));
    expect(media.length).toBe(c.dataset.length);
    for (const m of media) {
      const txt = path.join(folders.datasetDir, `${m.replace(/\.[^.]+$/, '')}.txt`);
      expect(existsSync(txt)).toBe(true);
      const caption = readFileSync(txt, 'utf8');
      caseReport.captionsSeen[m] = caption;
      expect(captionHasTrigger(caption, TRIGGER)).toBe(true);
    }
  });

  it("the LoRA passes the recipe's output checks and every key resolves under ComfyUI's LoRA rules", async () => {
    const loraPath = path.join(folders.outputDir, outputs.lora);
    expect(existsSync(loraPath)).toBe(true);
    const header = await readSafetensorsHeader(loraPath);
    const check = recipe.checkOutput(header);
    expect(check.problems).toEqual([]);
    expect(check.ok).toBe(true);
    const baseFile = requiredWeights(recipe, recipe.validate(c.parameters).ok ? (recipe.validate(c.parameters) as unknown as { value: never }).value : ({} as never)).find((w) => w.role === c.baseRole);
    if (!baseFile) throw new Error(`recipe ${c.recipeId} has no weight role ${c.baseRole}`);
    const base = await readSafetensorsHeader(path.join(MODELS, baseFile.fileName));
    const resolution = resolveComfyLoraKeys(c.family, Object.keys(base.tensors), Object.keys(header.tensors));
    caseReport.lora = {
      file: outputs.lora,
      bytes: (await fsp.stat(loraPath)).size,
      tensors: Object.keys(header.tensors).length,
      comfyMatched: resolution.matched.length,
      comfyUnmatched: resolution.unmatched.map((u) => `${u.loraKey}: ${u.reason}`),
    };
    expect(resolution.unmatched).toEqual([]);
    expect(resolution.matched.length).toBeGreaterThan(0);
  }, 120_000);
});

