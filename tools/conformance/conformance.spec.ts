/**
 * Engine conformance: each production recipe's rendered steps, run by the real
 * engine in the real image under the worker's real sandbox, on random-weight
 * base models in the exact files the loaders read (tools/conformance/models).
 *
 *   npx nx run recipes:conformance        (prepare.sh first: images, models, dataset)
 *   CONFORMANCE_ONLY=sdxl-lora,wan-lora   run a subset
 *   CONFORMANCE_ONLY=sdxl-lora:resume     only that recipe's resume case
 *   CONFORMANCE_ONLY=kontext-lora:style_subject   one mode of a recipe with several cases
 *
 * Per recipe it asserts: every step exits 0; the recipe's progress parser read
 * step, total and loss from the engine's own output; the LoRA passes the
 * recipe's output checks; every caption the engine read names the trigger
 * word; and every LoRA tensor key resolves to a weight of the base checkpoint
 * under ComfyUI's LoRA key rules (0 unmatched). The report (wall time, peak
 * container memory, substitutions) goes to .state/conformance/report.json.
 *
 * Edit models (Kontext): the platform dataset carries the control images as
 * the platform stores them (legacy `controlImages[].sourceFilename`), paired
 * by the recipes' `resolveControlPairs` and written beside the dataset as the
 * worker writes them (or the blank control, style/subject mode), mounted at
 * CONTAINER_PATHS.control. A case with an `engineShim` runs with the
 * conformance shim (tools/conformance/shim): a model too big for this host at
 * full size is built shallower by the engine's own code, from files with the
 * real keys; the report records every override.
 *
 * Resume cases (`<recipe>:resume`, SDXL and WAN) train the test run's two
 * steps with a save and engine state at step 1, then run the job again as a
 * re-claimed attempt: a fresh output folder holding only the step-1 state,
 * rendered with `resume`, every step again. They assert the second run ends
 * at the job's step 2 (progress and the LoRA's ss_steps, through the save
 * plan's stepsAfterResume), that the engine loaded the state, and record the
 * bytes of each checkpoint and state folder.
 */
import { promises as fsp, existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { DockerContainerRuntime, createDockerClient, type ContainerRunSpec } from '@stationthis/docker';
import {
  BLANK_CONTROL_PNG_BASE64,
  captionHasTrigger,
  checkControlSizes,
  checkpointFileAt,
  controlFileNameFor,
  getRecipe,
  jobStepOf,
  platformSourceFilename,
  resolveControlPairs,
  stateDirAt,
  requiredWeights,
  resolveComfyLoraKeys,
  summarizeDataset,
  trainingCaption,
  applyArgvSubstitutions,
  testRunWeights,
  type ProgressEvent,
  type Recipe,
  type RenderedJob,
  type ResumeFrom,
  type SavePlan,
} from '@stationthis/recipes';
import { createS3Client, DatasetFetcher, loadStorageConfig, ObjectStorage, type PlatformDatasetDoc } from '@stationthis/storage';
import { stepContainerSpec } from '../../apps/training-worker/src/pipeline/step-container';
import { readSafetensorsHeader } from '../../apps/training-worker/src/pipeline/safetensors-file';
import { serviceEnv, uniquePrefix } from '../testing/support';
import { CASES, RESUME_CASES, RESUME_SUFFIX, TRIGGER, caseId, shimOverrideLines, type ConformanceCase, type EngineShim, type ShimOverride } from './cases';

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
/** The conformance shim (tools/conformance/shim), mounted read-only for cases with an engineShim. */
const SHIM_DIR = path.join(__dirname, 'shim');
// No platform word in the path: the runtime refuses env values that contain a credential's value, and local keys can be short words.
const SHIM_MOUNT = '/opt/conformance-shim';

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
  /** Conformance-shim overrides the engine applied (cases with an engineShim). */
  engineShim?: { why: string; applied: string[] };
  /** Edit models: where the control images came from and what the engine got. */
  controls?: { source: string; files: string[] };
  /** Resume cases: the step-1 save and the resumed run. */
  saves?: SaveReport;
}
interface SaveReport {
  checkpoint: { file: string; bytes: number };
  state: { dir: string; bytes: number; files: Record<string, number> };
  /** The resumed run's last progress, as the engine printed it and as the job's step. */
  resumed?: { engineStep: number; engineTotal: number; jobStep: number; jobTotal: number; ssSteps: string | undefined; loraBytes: number; stateLoaded: boolean };
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

/**
 * The container changes a case's engineShim makes, on top of the worker's
 * spec: the shim folder mounted read-only and put first on the image's own
 * PYTHONPATH, and the overrides in its environment variable.
 */
async function withEngineShim(spec: ContainerRunSpec, shim: EngineShim): Promise<ContainerRunSpec> {
  const info = await createDockerClient().getImage(spec.image).inspect();
  const imagePath = (info.Config.Env ?? []).find((e) => e.startsWith('PYTHONPATH='))?.slice('PYTHONPATH='.length);
  if (!imagePath) throw new Error(`image ${spec.image} sets no PYTHONPATH: the conformance shim cannot be put in front of it`);
  return {
    ...spec,
    env: { ...spec.env, PYTHONPATH: `${SHIM_MOUNT}:${imagePath}`, STATIONTHIS_CONFORMANCE_OVERRIDES: JSON.stringify(shim.overrides) },
    mounts: [...spec.mounts, { hostPath: SHIM_DIR, containerPath: SHIM_MOUNT, readOnly: true }],
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

async function upload(c: ConformanceCase, file: string): Promise<string> {
  const key = `${prefix}${caseId(c).replace(/[^a-z0-9-]/g, '-')}/${file}`;
  await storage.putObject('datasets', key, await fsp.readFile(path.join(DATASET_MEDIA, file)));
  return storage.publicUrl('datasets', key);
}

async function platformDataset(c: ConformanceCase): Promise<PlatformDatasetDoc> {
  const urls: string[] = [];
  for (const item of c.dataset) urls.push(await upload(c, item.file));
  // The platform's legacy caption set, parallel to `images` ('' = no caption).
  const doc: PlatformDatasetDoc = { name: `conformance ${caseId(c)}`, images: urls, captionSets: [{ _id: 'cs1', isDefault: true, status: 'completed', captions: c.dataset.map((d) => d.caption) }] };
  if (c.dataset.some((d) => d.control)) {
    // The platform's legacy KONTEXT store: each control names its target by the platform's download name (`001.png`).
    const controlImages = [];
    for (const [i, item] of c.dataset.entries()) {
      if (item.control) controlImages.push({ generationOutputId: `conf${i}`, sourceFilename: platformSourceFilename(urls[i], i), url: await upload(c, item.control), addedAt: new Date() });
    }
    doc['controlImages'] = controlImages;
  }
  return doc;
}


interface JobFolders {
  datasetDir: string;
  jobDir: string;
  outputDir: string;
  logFile: string;
}

function foldersIn(run: string, name: string, datasetDir: string): JobFolders {
  return { datasetDir, jobDir: path.join(run, `${name}-job`), outputDir: path.join(run, `${name}-output`), logFile: path.join(run, `${name}.log`) };
}

async function makeReadable(dir: string): Promise<void> {
  for (const f of await fsp.readdir(dir)) await fsp.chmod(path.join(dir, f), 0o644);
  await fsp.chmod(dir, 0o755);
}

/**
 * The platform dataset fetched into `datasetDir` the worker's way (captions
 * with the trigger word) and, for a recipe that needs control images, those
 * written into `controlDir` as the worker's inputs step writes them: paired
 * by `resolveControlPairs`, fetched as an image list in dataset order (so the
 * i-th control gets the i-th image's stem), shapes checked; or the blank
 * control for every image.
 */
async function fetchDataset(c: ConformanceCase, recipe: Recipe<unknown>, parameters: unknown, datasetDir: string, controlDir?: string) {
  const doc = await platformDataset(c);
  const need = recipe.controlImagesFor?.(parameters as never);
  const pairing = need?.source === 'paired' ? resolveControlPairs(doc) : undefined;
  if (pairing && !pairing.ok) throw new Error(`control pairs refused: ${pairing.problems.map((p) => p.message).join(' ')}`);
  const conceptPrompt = pairing?.ok ? pairing.pairing.prompt : undefined;
  const fetched = await fetcher.fetch(doc, datasetDir, {
    captionSetId: 'cs1',
    allowVideo: recipe.datasetRequirements.allowVideo,
    captionFor: (caption) => trainingCaption(conceptPrompt ?? caption, TRIGGER),
  });
  await makeReadable(datasetDir);
  if (!need) return { fetched };
  if (!controlDir) throw new Error(`${recipe.id} needs control images and the case gave no control folder`);
  await fsp.rm(controlDir, { recursive: true, force: true });
  await fsp.mkdir(controlDir, { recursive: true });
  if (need.source === 'blank') {
    const names = fetched.images.map((img) => controlFileNameFor(img.fileName, 'png'));
    for (const name of names) await fsp.writeFile(path.join(controlDir, name), Buffer.from(BLANK_CONTROL_PNG_BASE64, 'base64'));
    await makeReadable(controlDir);
    return { fetched, controls: { source: 'blank', files: names } };
  }
  if (!pairing?.ok) throw new Error('unreachable: paired controls without a pairing');
  const controls = await fetcher.fetch({ images: pairing.pairing.pairs.map((x) => x.controlUrl) }, controlDir, { allowVideo: false });
  const names = controls.images.map((ctl, i) => {
    const expected = controlFileNameFor(fetched.images[i].fileName, ctl.fileName.slice(ctl.fileName.lastIndexOf('.') + 1));
    if (ctl.fileName !== expected) throw new Error(`control ${i + 1} stored as ${ctl.fileName}, not ${expected} (its image's stem)`);
    return ctl.fileName;
  });
  const sizes = (img: { width?: number; height?: number }) => (img.width !== undefined && img.height !== undefined ? { width: img.width, height: img.height } : undefined);
  const mismatched = checkControlSizes(pairing.pairing.pairs.map((x, i) => ({ index: x.index, target: sizes(fetched.images[i]), control: sizes(controls.images[i]) })));
  if (mismatched.length > 0) throw new Error(`control shapes refused: ${mismatched.join('; ')}`);
  await makeReadable(controlDir);
  return { fetched, controls: { source: pairing.pairing.source, files: names } };
}

function caseWeights(recipe: Recipe<unknown>, parameters: unknown, caseReport: CaseReport) {
  const testWeights = testRunWeights(recipe, requiredWeights(recipe, parameters as never));
  caseReport.modelOverrides.push(...testWeights.applied);
  const weights = testWeights.weights.map((w) => ({ fileName: w.fileName, path: path.join(MODELS, w.fileName), role: w.role }));
  for (const w of weights) if (!existsSync(w.path)) throw new Error(`missing conformance model ${w.path}; run tools/conformance/prepare.sh`);
  return weights;
}

/**
 * Run every rendered step in the image under the worker's sandbox, with the
 * recipe's test-run changes (resumed: `resumedAtStep`); progress events of the
 * training step go to `events`, every line to `lines`.
 */
async function runRendered(
  recipe: Recipe<unknown>,
  rendered: RenderedJob,
  image: string,
  folders: JobFolders,
  weights: { fileName: string; path: string; role: string }[],
  caseReport: CaseReport,
  opts: { label: string; events: ProgressEvent[]; lines?: string[]; resumedAtStep?: number; engineShim?: EngineShim },
): Promise<void> {
  for (const d of [folders.jobDir, folders.outputDir]) await fsp.mkdir(d, { recursive: true });
  await fsp.chmod(folders.outputDir, 0o777);
  for (const f of rendered.files) await fsp.writeFile(path.join(folders.jobDir, f.path), f.content, { mode: 0o644 });
  for (const step of rendered.steps) {
    const { argv, applied } = applyArgvSubstitutions(step.argv, recipe.testRun?.substitutions ?? [], opts.resumedAtStep ? { resumedAtStep: opts.resumedAtStep } : {});
    const parser = recipe.createProgressParser();
    const memory = watchPeakMemory();
    const started = Date.now();
    const spec = stepContainerSpec({
        image,
        recipe,
        step: { name: step.name, argv },
        folders: { ...folders, weights },
        jobId: 'conformance',
        gpuDeviceIds: [],
        memoryBytes: MEMORY_BYTES,
        pidsLimit: 4096,
        labels: { jobId: `conformance-${caseReport.recipe.replace(/[^a-z0-9-]/g, '-')}`, attemptId: opts.label || 'a1', workerId: 'conformance' },
        deadlineMs: 3 * 60 * 60 * 1000,
        stallTimeoutMs: 45 * 60 * 1000,
      });
    const result = await runtime.run(
      opts.engineShim ? await withEngineShim(spec, opts.engineShim) : spec,
      {
        onStarted: (id) => memory.onStarted(id),
        onLine: (line) => {
          opts.lines?.push(line);
          const shimmed = /^\[conformance shim\] (.*)$/.exec(line);
          if (shimmed && caseReport.engineShim && !caseReport.engineShim.applied.includes(shimmed[1])) caseReport.engineShim.applied.push(shimmed[1]);
          for (const ev of parser.feed(line)) if (step.reportsTrainingProgress) opts.events.push(ev);
        },
      },
    );
    caseReport.steps.push({ name: opts.label ? `${opts.label}:${step.name}` : step.name, argvChanges: applied, wallSeconds: Math.round((Date.now() - started) / 100) / 10, peakRssBytes: memory.stop(), exitCode: result.exitCode });
    if (result.failureClass) {
      throw new Error(`step ${opts.label ? `${opts.label}:` : ''}${step.name} failed (${result.failureClass}, exit ${result.exitCode}): ${result.failureMessage ?? ''}\n${result.lastLines.slice(-40).join('\n')}`);
    }
    expect(result.exitCode).toBe(0);
  }
}

function lastStep(events: ProgressEvent[]): Extract<ProgressEvent, { kind: 'step' }> | undefined {
  return events.filter((e): e is Extract<ProgressEvent, { kind: 'step' }> => e.kind === 'step').pop();
}

async function folderBytes(dir: string): Promise<{ bytes: number; files: Record<string, number> }> {
  const files: Record<string, number> = {};
  let bytes = 0;
  for (const entry of await fsp.readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const full = path.join(entry.parentPath, entry.name);
    const size = (await fsp.stat(full)).size;
    files[path.relative(dir, full)] = size;
    bytes += size;
  }
  return { bytes, files };
}

/** Copy a state folder as the worker puts it back: writable by the container user, which may save into the same name. */
async function putBackState(from: string, to: string): Promise<void> {
  await fsp.cp(from, to, { recursive: true });
  for (const entry of await fsp.readdir(to, { recursive: true, withFileTypes: true })) {
    await fsp.chmod(path.join(entry.parentPath, entry.name), entry.isDirectory() ? 0o777 : 0o666);
  }
  await fsp.chmod(to, 0o777);
}

/** describe.each over the selected cases, or nothing when none is selected (jest refuses an empty table). */
function describeEach<C>(rows: (readonly [string, C])[]): (name: string, fn: (id: string, c: C) => void) => void {
  return (name, fn) => {
    if (rows.length > 0) describe.each(rows)(name, fn);
  };
}

// A recipe id selects all its cases (every training mode); `<recipe>:<variant>` one of them.
const cases = CASES.filter((c) => ONLY.length === 0 || ONLY.includes(c.recipeId) || ONLY.includes(caseId(c)));
const resumeCases = RESUME_CASES.filter((c) => ONLY.length === 0 || ONLY.includes(c.recipeId + RESUME_SUFFIX));

describeEach(cases.map((c) => [caseId(c), c] as const))('%s conformance', (id, c) => {
  const recipe = getRecipe(c.recipeId) as Recipe<unknown>;
  const run = path.join(WORK, id.replace(/[^a-z0-9-]/g, '-'));
  const controlDir = recipe.controlImagesFor?.(c.parameters as never) ? path.join(run, 'control') : undefined;
  const folders = { datasetDir: path.join(run, 'dataset'), jobDir: path.join(run, 'job'), outputDir: path.join(run, 'output'), logFile: path.join(run, 'engine.log'), ...(controlDir ? { controlDir } : {}) };
  const events: ProgressEvent[] = [];
  const caseReport: CaseReport = {
    recipe: id,
    image: '',
    steps: [],
    progress: null,
    lora: null,
    captionsSeen: {},
    modelOverrides: [],
    ...(c.engineShim ? { engineShim: { why: c.engineShim.why, applied: [] } } : {}),
  };
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
    const { fetched, controls } = await fetchDataset(c, recipe, validated.value, folders.datasetDir, controlDir);
    if (controls) caseReport.controls = controls;
    const weights = caseWeights(recipe, validated.value, caseReport);
    const rendered = recipe.render({
      jobId: `conf${id.replace(/[^a-z0-9]/g, '')}`,
      parameters: validated.value,
      triggerWord: TRIGGER,
      outputName: `conformance_${id.replace(/[^a-z0-9]/g, '_')}`,
      dataset: summarizeDataset(fetched.images),
      baseModelFiles: Object.fromEntries(weights.map((w) => [w.role, w.fileName])),
      ...(controls ? { controlImages: controls.files } : {}),
    });
    outputs = rendered.outputs;
    const image = imageFor(recipe);
    caseReport.image = image;
    await runtime.ensureImage(image);
    await runRendered(recipe, rendered, image, folders, weights, caseReport, { label: '', events, ...(c.engineShim ? { engineShim: c.engineShim } : {}) });
  }, 4 * 60 * 60 * 1000);

  if (c.engineShim) {
    it('the engine built the model the engineShim describes: every override applied, as the base-model files were made', () => {
      const want = (c.engineShim?.overrides ?? []).flatMap(shimOverrideLines);
      const applied = (caseReport.engineShim?.applied ?? []).map((a) => a.replace(/: \S+ -> /, ': '));
      expect(applied).toEqual(expect.arrayContaining(want));
    });
  }

  if (controlDir) {
    it('every dataset image has its control image under its own stem, as the engine pairs them', async () => {
      const stems = (await fsp.readdir(folders.datasetDir)).filter((f) => !f.endsWith('.txt')).map((f) => f.replace(/\.[^.]+$/, '')).sort();
      const controls = (await fsp.readdir(controlDir)).map((f) => f.replace(/\.[^.]+$/, '')).sort();
      expect(controls).toEqual(stems);
      expect(caseReport.controls?.source).toBe(c.dataset.some((d) => d.control) ? 'controlImages (legacy, by sourceFilename)' : 'blank');
    });
  }

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


/**
 * The shim's own guarantees, in the image of each shimmed case: without its
 * variable it changes nothing (the image's sitecustomize still runs, the
 * engine's config keeps the full depth), and an override naming a field the
 * engine does not have stops the process instead of doing nothing.
 */
const shimmed = cases.filter((c) => c.engineShim).filter((c, i, all) => all.findIndex((x) => x.recipeId === c.recipeId) === i);
describeEach(shimmed.map((c) => [c.recipeId, c] as const))('%s conformance shim', (_id, c) => {
  const recipe = getRecipe(c.recipeId) as Recipe<unknown>;
  const shim = c.engineShim as EngineShim;
  const run = path.join(WORK, `${c.recipeId}-shim`);

  async function python(code: string, overrides: unknown[] | null): Promise<{ exitCode: number | null; lines: string[] }> {
    await fsp.mkdir(run, { recursive: true });
    const image = imageFor(recipe);
    await runtime.ensureImage(image);
    const base = stepContainerSpec({
      image,
      recipe,
      step: { name: 'shim-check', argv: ['python', '-c', code] },
      folders: { datasetDir: run, jobDir: run, outputDir: run, weights: [], logFile: path.join(run, 'shim.log') },
      jobId: 'conformance',
      gpuDeviceIds: [],
      memoryBytes: 2 * 1024 ** 3,
      pidsLimit: 256,
      labels: { jobId: `conformance-${c.recipeId}-shim`, attemptId: 'a1', workerId: 'conformance' },
      deadlineMs: 5 * 60 * 1000,
      stallTimeoutMs: 5 * 60 * 1000,
    });
    const spec = await withEngineShim(base, { ...shim, overrides: (overrides ?? []) as EngineShim['overrides'] });
    if (overrides === null) delete spec.env?.['STATIONTHIS_CONFORMANCE_OVERRIDES'];
    const lines: string[] = [];
    const result = await runtime.run(spec, { onLine: (l) => lines.push(l) });
    return { exitCode: result.exitCode, lines };
  }

  // The guards read the first field override (every shimmed case has one: a model's depth).
  const o = shim.overrides.find((x): x is Extract<ShimOverride, { set: unknown }> => 'set' in x && x.object !== '');
  if (!o) throw new Error(`case ${caseId(c)}: its engineShim needs a field override on an object for the shim's guard tests`);
  const field = Object.keys(o.set)[0];
  const read = `import importlib, sys; m = importlib.import_module(${JSON.stringify(o.module)}); print("VALUE", eval(${JSON.stringify(`m.${o.object}.${field}`)}), "IMAGE_HOOK", "_image_sitecustomize" in sys.modules)`;

  it('is inert without its variable: the engine keeps its own value, and the image hook still loads', async () => {
    const { exitCode, lines } = await python(read, null);
    expect(exitCode).toBe(0);
    const out = lines.find((l) => l.startsWith('VALUE '));
    expect(out).toBeDefined();
    expect(out).not.toBe(`VALUE ${o.set[field]} IMAGE_HOOK True`);
    expect(out).toMatch(/IMAGE_HOOK True$/);
    expect(lines.some((l) => l.startsWith('[conformance shim]'))).toBe(false);
  }, 10 * 60 * 1000);

  it('with its variable sets the value before the engine reads it', async () => {
    const { exitCode, lines } = await python(read, shim.overrides);
    expect(exitCode).toBe(0);
    expect(lines).toContain(`VALUE ${o.set[field]} IMAGE_HOOK True`);
  }, 10 * 60 * 1000);

  it('stops the process when an override names a field the engine does not have', async () => {
    const { exitCode, lines } = await python(read, [{ ...o, set: { no_such_field_h2: 1 } }]);
    expect(exitCode).not.toBe(0);
    expect(lines.join('\n')).toMatch(/has no field 'no_such_field_h2'/);
  }, 10 * 60 * 1000);

  // A call override (a loader's local config, e.g. FLUX.2 klein's Qwen3Config): replaces the keyword, and a call without it is fatal.
  const call = shim.overrides.find((x): x is Extract<ShimOverride, { call: unknown }> => 'call' in x);
  if (call) {
    const [kw, value] = Object.entries(call.call)[0];
    const callIt = (kwargs: string) =>
      `import importlib; m = importlib.import_module(${JSON.stringify(call.module)}); r = getattr(m, ${JSON.stringify(call.object)})(${kwargs}); print("CALLED", getattr(r, ${JSON.stringify(kw)}))`;

    it('with its variable replaces the keyword the engine passes to the callable it names', async () => {
      const { exitCode, lines } = await python(callIt(`${kw}=999`), shim.overrides);
      expect(exitCode).toBe(0);
      expect(lines).toContain(`CALLED ${value}`);
    }, 10 * 60 * 1000);

    it('stops the process when the engine calls it without that keyword', async () => {
      const { exitCode, lines } = await python(callIt(''), shim.overrides);
      expect(exitCode).not.toBe(0);
      expect(lines.join('\n')).toMatch(new RegExp(`was called without '${kw}'`));
    }, 10 * 60 * 1000);
  }
});

describeEach(resumeCases.map((c) => [c.recipeId + RESUME_SUFFIX, c] as const))('%s conformance', (id, c) => {
  const recipe = getRecipe(c.recipeId) as Recipe<unknown>;
  const run = path.join(WORK, id.replace(/[^a-z0-9-]/g, '-'));
  const datasetDir = path.join(run, 'dataset');
  const first = foldersIn(run, 'first', datasetDir);
  const second = foldersIn(run, 'resumed', datasetDir);
  const caseReport: CaseReport = { recipe: id, image: '', steps: [], progress: null, lora: null, captionsSeen: {}, modelOverrides: [] };
  const firstEvents: ProgressEvent[] = [];
  const secondEvents: ProgressEvent[] = [];
  const secondLines: string[] = [];
  let plan: SavePlan | undefined;
  let resume: ResumeFrom | undefined;
  let lora = '';

  beforeAll(async () => {
    await fsp.rm(run, { recursive: true, force: true });
    await fsp.mkdir(run, { recursive: true });
    report.push(caseReport);
  });

  it('trains the test run with a save and engine state at step 1, then resumes from that state in a fresh output folder', async () => {
    const validated = recipe.validate(c.parameters);
    if (!validated.ok) throw new Error(`case parameters invalid: ${JSON.stringify(validated.issues)}`);
    const { fetched } = await fetchDataset(c, recipe, validated.value, datasetDir);
    const weights = caseWeights(recipe, validated.value, caseReport);
    const input = {
      jobId: `confresume${c.recipeId.replace(/[^a-z0-9]/g, '')}`,
      parameters: validated.value,
      triggerWord: TRIGGER,
      outputName: `conformance_${c.recipeId.replace(/-/g, '_')}`,
      dataset: summarizeDataset(fetched.images),
      baseModelFiles: Object.fromEntries(weights.map((w) => [w.role, w.fileName])),
    };
    const rendered = recipe.render(input);
    plan = rendered.outputs.saves;
    if (!plan?.stateTemplate) throw new Error(`${c.recipeId} renders no state saves for saveEveryNSteps 1`);
    lora = rendered.outputs.lora;
    const image = imageFor(recipe);
    caseReport.image = image;
    await runtime.ensureImage(image);

    await runRendered(recipe, rendered, image, first, weights, caseReport, { label: 'first', events: firstEvents });
    expect(lastStep(firstEvents)).toMatchObject({ step: 2, totalSteps: 2 });

    const checkpoint = path.join(first.outputDir, checkpointFileAt(plan, 1));
    const stateDir = stateDirAt(plan, 1) ?? '';
    expect(existsSync(checkpoint)).toBe(true);
    expect(existsSync(path.join(first.outputDir, stateDir))).toBe(true);
    const state = await folderBytes(path.join(first.outputDir, stateDir));
    caseReport.saves = { checkpoint: { file: checkpointFileAt(plan, 1), bytes: (await fsp.stat(checkpoint)).size }, state: { dir: stateDir, ...state } };

    // The re-claimed attempt: a fresh output folder with only the state put back, every step again.
    resume = { step: 1, stateDir };
    await fsp.mkdir(second.outputDir, { recursive: true });
    await putBackState(path.join(first.outputDir, stateDir), path.join(second.outputDir, stateDir));
    const resumed = recipe.render({ ...input, resume });
    await runRendered(recipe, resumed, image, second, weights, caseReport, { label: 'resumed', events: secondEvents, lines: secondLines, resumedAtStep: resume.step });
  }, 4 * 60 * 60 * 1000);

  it('the state folder holds what accelerate restores: LoRA weights, optimizer, scheduler, RNG states', () => {
    const files = Object.keys(caseReport.saves?.state.files ?? {});
    expect(files).toEqual(expect.arrayContaining(['model.safetensors', 'optimizer.bin', 'scheduler.bin', 'random_states_0.pkl']));
    // sd-scripts also records the step (train_state.json), which --initial_step 0 overrides by design.
    if (c.recipeId === 'sdxl-lora') expect(files).toContain('train_state.json');
  });

  it("the resumed run loaded the state and ends at the job's step 2 of 2", async () => {
    if (!plan || !resume || !caseReport.saves) throw new Error('the first run did not complete; see the test above');
    expect(secondLines.some((l) => /resume training from local state/.test(l))).toBe(true);
    const last = lastStep(secondEvents);
    if (!last) throw new Error('the resumed run reported no step');
    // The engine restarts its count: it trains the 1 step left, and the plan says how to add the resumed step.
    const jobStep = jobStepOf(plan, last.step, resume);
    const jobTotal = jobStepOf(plan, last.totalSteps, resume);
    const loraPath = path.join(second.outputDir, lora);
    expect(existsSync(loraPath)).toBe(true);
    const header = await readSafetensorsHeader(loraPath);
    expect(recipe.checkOutput(header).problems).toEqual([]);
    const ssSteps = header.metadata['ss_steps'];
    caseReport.progress = { step: jobStep, totalSteps: jobTotal, loss: last.loss };
    caseReport.saves.resumed = { engineStep: last.step, engineTotal: last.totalSteps, jobStep, jobTotal, ssSteps, loraBytes: (await fsp.stat(loraPath)).size, stateLoaded: true };
    expect({ jobStep, jobTotal }).toEqual({ jobStep: 2, jobTotal: 2 });
    expect(jobStepOf(plan, Number(ssSteps), resume)).toBe(2);
    expect(secondEvents.filter((e) => e.kind === 'error')).toEqual([]);
  }, 120_000);
});
