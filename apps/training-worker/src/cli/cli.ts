/**
 * Operator CLI: submit a job from a local folder, list jobs with live
 * progress, follow one job with a progress bar, cancel, show a job (its
 * checkpoints included), its result table and points history, and promote a
 * checkpoint of a completed job.
 *
 *   node apps/training-worker/dist/cli/cli.js <command> [options]
 */
import 'reflect-metadata';
import { randomUUID } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { ObjectId } from 'mongodb';
import {
  DatasetRepository,
  finalStepOf,
  LoraModelRepository,
  platformAttemptOf,
  promotableCheckpoints,
  TrainingAttemptRepository,
  TrainingJobRepository,
  UserCoreAccounts,
  type LoraModelDoc,
  type TrainingAttemptDoc,
  type TrainingJobDoc,
} from '@stationthis/db';
import { PointsLedger } from '@stationthis/points';
import { ObjectStorage } from '@stationthis/storage';
import { getRecipe, recipeForModelType } from '@stationthis/recipes';
import { loadWorkerConfig } from '../config/worker-config';
import { compose, ensureIndexes } from '../composition';
import { createLogger } from '../observability/logger';
import { writeDemoImages } from './demo-images';
import { followJob, JobNotFound } from './follow';
import { readResult, readSnapshot } from './job-result';
import { renderResultTable } from './progress-bar';
import { CheckpointPromotion, PromotionRefused } from '../checkpoints/checkpoint-promotion';

const USAGE = `Usage: cli <command> [options]
  submit   --dir DIR --owner ACCOUNT_ID [--model SMOKE|SDXL|FLUX|WAN] [--name NAME] [--trigger WORD]
           [--wallet ADDRESS] [--steps N] [--param key=value ...] [--priority N]
  list     [--status STATUS] [--watch]
  follow   JOB_ID [--json] [--interval MS] [--worker-pid PID]
           (a live bar in a terminal, plain lines otherwise; exit 0 COMPLETED, 1 FAILED/CANCELLED,
            3 the worker PID exited first, 4 the job could not be read for 60 s)
  result   JOB_ID   (the result table: status, steps, final loss, model and sample URLs, points, balance)
  cancel   JOB_ID
  show     JOB_ID [--json]
  promote  JOB_ID --step N|final [--as-version]   (a COMPLETED job: its model loads checkpoint N, or N becomes a second model)
  points   (--job JOB_ID | --account ACCOUNT_ID)
  seed-account --owner ACCOUNT_ID --wallet ADDRESS --points N   (local/demo: the account and a points grant, once)
  demo-images  --out DIR [--count N]`;

const MEDIA_TYPES: Record<string, string> = {
  '.png': 'image/png', '.jpg': 'image/jpeg', '.jpeg': 'image/jpeg', '.webp': 'image/webp',
  '.mp4': 'video/mp4', '.webm': 'video/webm', '.mov': 'video/quicktime',
};

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: {
      dir: { type: 'string' }, owner: { type: 'string' }, model: { type: 'string', default: 'SMOKE' }, name: { type: 'string' },
      trigger: { type: 'string' }, wallet: { type: 'string' }, steps: { type: 'string' }, param: { type: 'string', multiple: true },
      priority: { type: 'string' }, status: { type: 'string' }, watch: { type: 'boolean' }, job: { type: 'string' },
      account: { type: 'string' }, points: { type: 'string' }, out: { type: 'string' }, count: { type: 'string' }, json: { type: 'boolean' },
      step: { type: 'string' }, 'as-version': { type: 'boolean' }, interval: { type: 'string' }, 'worker-pid': { type: 'string' },
    },
  });
  if (command === 'demo-images') {
    if (!values.out) throw new UsageError('demo-images needs --out DIR');
    const files = await writeDemoImages(values.out, Number(values.count ?? 8));
    console.log(`wrote ${files.length} images with captions to ${values.out}`);
    return 0;
  }
  if (!command || command === 'help' || command === '--help') {
    console.log(USAGE);
    return command ? 0 : 2;
  }
  const config = loadWorkerConfig();
  const app = await compose(config, process.env, createLogger(process.env.LOG_LEVEL ?? 'warn'));
  try {
    await ensureIndexes(app.container);
    const jobs = app.container.resolve(TrainingJobRepository);
    const ledger = app.container.resolve(PointsLedger);
    switch (command) {
      case 'submit':
        return await submit(app.container.resolve(ObjectStorage), app.container.resolve(DatasetRepository), jobs, values, config.environment, config.recipesEnabled);
      case 'list':
        return await list(jobs, values.status, Boolean(values.watch));
      case 'follow': {
        const id = requireId(positionals[0]);
        const attempts = app.container.resolve(TrainingAttemptRepository);
        const workerPid = values['worker-pid'] !== undefined ? Number(values['worker-pid']) : undefined;
        if (workerPid !== undefined && !(Number.isSafeInteger(workerPid) && workerPid > 0)) throw new UsageError(`follow needs --worker-pid as a process id, got "${values['worker-pid']}"`);
        const intervalMs = values.interval !== undefined ? Number(values.interval) : 1000;
        if (!(Number.isFinite(intervalMs) && intervalMs >= 50)) throw new UsageError(`follow needs --interval in milliseconds (50 or more), got "${values.interval}"`);
        // Ctrl-C: end the live line, so the shell's prompt starts on a line of its own.
        if (process.stdout.isTTY) process.once('SIGINT', () => (process.stdout.write('\n'), process.exit(130)));
        try {
          return await followJob({
            jobId: id,
            read: () => readSnapshot({ jobs, attempts }, id),
            out: { write: (t) => process.stdout.write(t), isTTY: Boolean(process.stdout.isTTY), columns: () => process.stdout.columns || 80 },
            json: Boolean(values.json),
            intervalMs,
            workerPid,
          });
        } catch (err) {
          if (err instanceof JobNotFound) throw new UsageError(err.message);
          throw err;
        }
      }
      case 'result': {
        const id = requireId(positionals[0]);
        const sources = { jobs, attempts: app.container.resolve(TrainingAttemptRepository), models: app.container.resolve(LoraModelRepository), ledger };
        const result = await readResult(sources, id);
        if (!result) throw new UsageError(`job ${id} not found`);
        if (values.json) console.log(JSON.stringify(result, null, 2));
        else console.log(renderResultTable(result).join('\n'));
        return result.status === 'COMPLETED' ? 0 : 1;
      }
      case 'cancel': {
        const id = requireId(positionals[0]);
        const result = await jobs.requestCancel(id, 'cli');
        const says: Record<string, string> = {
          cancelled: `job ${id} was still queued: it is CANCELLED and nothing was charged`,
          requested: `cancel requested for ${id}; the owning worker stops it within seconds and settles the points`,
          'already-requested': `a cancel was already requested for ${id}`,
          terminal: `job ${id} has already ended; nothing to cancel`,
          'not-found': `job ${id} not found`,
        };
        console.log(says[result] ?? result);
        return result === 'not-found' || result === 'terminal' ? 1 : 0;
      }
      case 'show':
        return await show(jobs, app.container.resolve(TrainingAttemptRepository), app.container.resolve(LoraModelRepository), ledger, requireId(positionals[0]), Boolean(values.json));
      case 'promote':
        return await promote(app.container.resolve(CheckpointPromotion), requireId(positionals[0]), values.step, Boolean(values['as-version']));
      case 'points': {
        const history = values.job ? await ledger.history({ jobId: values.job }) : values.account ? await ledger.history({ masterAccountId: values.account }) : null;
        if (!history) throw new UsageError('points needs --job JOB_ID or --account ACCOUNT_ID');
        printHistory(history as never[]);
        return 0;
      }
      case 'seed-account': {
        if (!values.owner || !values.wallet || !values.points) throw new UsageError('seed-account needs --owner, --wallet and --points');
        const points = Number(values.points);
        if (!Number.isSafeInteger(points) || points <= 0) throw new UsageError(`seed-account needs --points as a positive whole number, got "${values.points}"`);
        // Each library writes its own documents: db creates the account, points grants the entry (once per key).
        const { user, created } = await app.container.resolve(UserCoreAccounts).ensureAccount({ masterAccountId: values.owner, walletAddress: values.wallet });
        const grant = await ledger.grant({
          idempotencyKey: `demo-deposit-${values.owner}-${points}`,
          masterAccountId: user._id,
          walletAddress: values.wallet,
          points,
          reason: 'local/demo account seeded by the operator CLI',
        });
        const balance = await ledger.balance({ masterAccountId: user._id, walletAddress: values.wallet });
        console.log(
          `account ${values.owner} ${created ? 'created' : 'exists'}; ${grant.replay ? `the grant of ${points} points was already made` : `granted ${points} points`} (balance now ${balance})`,
        );
        return 0;
      }
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } finally {
    await app.close();
  }
}

class UsageError extends Error {}

function requireId(id: string | undefined): string {
  if (!id || !/^[a-f0-9]{24}$/.test(id)) throw new UsageError('expected a 24-hex job id');
  return id;
}

async function submit(
  storage: ObjectStorage,
  datasets: DatasetRepository,
  jobs: TrainingJobRepository,
  v: Record<string, unknown>,
  environment: string,
  recipesEnabled: readonly string[],
): Promise<number> {
  const dir = v.dir as string | undefined;
  const owner = v.owner as string | undefined;
  if (!dir || !owner) throw new UsageError('submit needs --dir and --owner');
  // Operator-only recipes (RECIPES_ENABLED) are accepted only where this worker would train them.
  const recipe = recipeForModelType(String(v.model), { enabled: recipesEnabled });
  // The recipe's own list: videos only for recipes that train on them (WAN).
  const allowed = new Set(recipe.datasetRequirements.extensions.map((e) => `.${e}`));
  const names = (await readdir(dir)).filter((n) => MEDIA_TYPES[extname(n).toLowerCase()] && allowed.has(extname(n).toLowerCase())).sort();
  if (names.length === 0) throw new UsageError(`no ${[...allowed].join('/')} files in ${dir}`);
  const name = String(v.name ?? `cli-${Date.now()}`);
  const urls: string[] = [];
  const captions: string[] = [];
  for (const file of names) {
    const key = `datasets/${owner}/${randomUUID()}-${file.replace(/[^A-Za-z0-9._-]/g, '_')}`;
    await storage.putObject('datasets', key, await readFile(join(dir, file)), { contentType: MEDIA_TYPES[extname(file).toLowerCase()] });
    urls.push(storage.publicUrl('datasets', key));
    captions.push(await readFile(join(dir, file.replace(/\.[^.]+$/, '.txt')), 'utf8').then((s) => s.trim(), () => ''));
    process.stderr.write(`\ruploaded ${urls.length}/${names.length} files`);
  }
  process.stderr.write('\n');
  const datasetId = await datasets.create({
    name: `${name} dataset`,
    ownerAccountId: new ObjectId(owner),
    images: urls,
    captionSets: [{ _id: new ObjectId(), method: 'manual', captions, createdBy: new ObjectId(owner), createdAt: new Date(), status: 'completed', isDefault: true }],
    visibility: 'private',
  } as never);
  const params: Record<string, unknown> = {};
  for (const kv of (v.param as string[] | undefined) ?? []) {
    const [k, ...val] = kv.split('=');
    const raw = val.join('=');
    params[k] = raw !== '' && !Number.isNaN(Number(raw)) ? Number(raw) : raw === 'true' ? true : raw === 'false' ? false : raw;
  }
  const trigger = String(v.trigger ?? name);
  const jobId = await jobs.enqueue({
    userId: owner,
    ownerAccountId: owner,
    name,
    modelName: name,
    walletAddress: (v.wallet as string | undefined)?.toLowerCase(),
    datasetId: String(datasetId),
    datasetImageCount: urls.length,
    modelType: recipe.family,
    baseModel: recipe.baseModel,
    ...(v.steps ? { steps: Number(v.steps) } : {}),
    triggerWord: trigger,
    triggerWords: [trigger],
    environment,
    priority: v.priority ? Number(v.priority) : 0,
    // Recipe parameters ride in the job's `parameters` object (see jobParametersFromPlatformDoc); enqueue keeps only `extra`.
    ...(Object.keys(params).length ? { extra: { parameters: params } } : {}),
  } as never);
  console.log(String(jobId));
  return 0;
}

function fmtRow(j: Record<string, unknown>): string {
  const eta = typeof j.etaSeconds === 'number' ? `${Math.round(j.etaSeconds)}s` : '';
  const loss = typeof j.currentLoss === 'number' ? j.currentLoss.toFixed(4) : '';
  const step = j.totalSteps ? `${j.currentStep ?? 0}/${j.totalSteps}` : '';
  return [String(j._id), String(j.status).padEnd(12), `${String(j.progress ?? 0).padStart(3)}%`, step.padEnd(11), loss.padEnd(8), eta.padEnd(6), String(j.modelType ?? ''), String(j.name ?? '')].join('  ');
}

async function list(jobs: TrainingJobRepository, status: string | undefined, watch: boolean): Promise<number> {
  do {
    const rows = await jobs.list((status ? { status } : {}) as never);
    if (watch) process.stdout.write('\x1b[2J\x1b[H');
    console.log(['JOB ID'.padEnd(24), 'STATUS'.padEnd(12), 'PROG', 'STEP'.padEnd(11), 'LOSS'.padEnd(8), 'ETA'.padEnd(6), 'MODEL', 'NAME'].join('  '));
    for (const j of rows.slice(-50)) console.log(fmtRow(j as never));
    if (watch) await new Promise((r) => setTimeout(r, 2000));
  } while (watch);
  return 0;
}

function printHistory(history: Record<string, unknown>[]): void {
  if (history.length === 0) console.log('(no points movements)');
  for (const m of history) {
    console.log([String(m.createdAt instanceof Date ? m.createdAt.toISOString() : m.createdAt ?? '').padEnd(24), String(m.kind ?? m.type ?? '').padEnd(16), String(m.points ?? m.amount ?? '').padStart(8), String(m.jobId ?? '').padEnd(24), String(m.reason ?? m.description ?? '')].join('  '));
  }
}

/**
 * One job: its document, its model, and the current platform attempt's record
 * (quote, charge, recipe) and settle decision, which is where the worker keeps
 * them (the job document is the platform's; `job.pipeline` is no longer written).
 */
async function show(jobs: TrainingJobRepository, attempts: TrainingAttemptRepository, models: LoraModelRepository, ledger: PointsLedger, id: string, json: boolean): Promise<number> {
  const job = await jobs.findById(id);
  if (!job) throw new UsageError(`job ${id} not found`);
  const platformAttempt = platformAttemptOf(job);
  const [model, attempt, decision, history] = await Promise.all([
    job.loraModelId ? models.findById(String(job.loraModelId)) : null,
    attempts.find(id, platformAttempt),
    attempts.findDecision(id, platformAttempt),
    ledger.history({ jobId: id }),
  ]);
  if (json) {
    console.log(JSON.stringify({ job, platformAttempt, attempt, decision, model, points: history }, null, 2));
    return 0;
  }
  console.log(`Job ${id}: ${job.status}${job.failureReason ? ` (${job.failureReason})` : ''}`);
  if (model) {
    const m = model as Record<string, unknown> & { publishedTo?: { modelFileUrl?: string } };
    console.log(`Model: ${m.name} slug=${m.slug} checkpoint=${m.checkpoint}`);
    console.log(`Model URL: ${m.publishedTo?.modelFileUrl ?? job.modelRepoUrl}`);
  }
  console.log(`\nPlatform attempt ${platformAttempt}${platformAttempt > 0 ? ' (after a platform Retry)' : ''}:`);
  if (!attempt) {
    console.log('  not claimed by a worker yet (no attempt record): nothing quoted or charged');
  } else {
    const { state } = attempt;
    const quote = state.quote;
    console.log(`  Quote: ${quote ? `${quote.points} points for about ${quote.estimatedSeconds} s at $${quote.gpuUsdPerHour}/h (fee ${quote.platformFee ?? 'n/a'})` : 'none yet'}`);
    console.log(`  Charged: ${state.charged ? `yes, ${quote?.points ?? '?'} points` : attempt.open ? 'in progress or unknown (the record is open: the sweep settles it if the attempt ends)' : 'no'}`);
    if (state.trainSeconds !== undefined) console.log(`  Trained: ${state.trainSeconds} s`);
    // This attempt's own outputs, as recorded when they were stored (keys per platform attempt and claim).
    const up = state.upload;
    if (up) console.log(`  Outputs: ${up.sampleUrls.length} samples${up.sampleUrls.map((u) => `\n    sample ${u}`).join('')}\n    log    ${up.logUrl ?? '(none)'}\n    spec   ${up.configUrl ?? '(none)'}`);
    console.log(`  Settled: ${decision ? `${decision.outcome}, ${decision.usedPoints} points used (${decision.reason}; decided by ${decision.decidedBy})` : 'not yet'}${attempt.settledAt ? '' : decision ? ' (points still moving)' : ''}`);
    printCheckpoints(job, attempt, model as LoraModelDoc | null);
    try {
      const recipe = state.recipeId ? getRecipe(state.recipeId) : null;
      if (recipe) console.log(`  Recipe: ${recipe.id}@${state.recipeVersion ?? recipe.version} (${recipe.engine.name} ${recipe.engine.commit.slice(0, 10)})`);
    } catch {
      console.log(`  Recipe: ${state.recipeId}@${state.recipeVersion ?? '?'} (no longer in this build)`);
    }
  }
  console.log('\nJob record:');
  console.log(JSON.stringify(job, null, 2));
  console.log('\nPoints history:');
  printHistory(history as never[]);
  return 0;
}

/** The attempt's checkpoints (and the final LoRA), which one the model loads, what retention deleted, and the promotions. */
function printCheckpoints(job: TrainingJobDoc, attempt: TrainingAttemptDoc, model: LoraModelDoc | null): void {
  const checkpoints = promotableCheckpoints(attempt.state, finalStepOf(job, model), typeof job.currentLoss === 'number' ? job.currentLoss : null);
  if (checkpoints.length === 0) return;
  const loaded = (model?.publishedTo as { storageKey?: string } | undefined)?.storageKey;
  const promotedStep = (model?.promotedCheckpoint as { step?: number } | undefined)?.step;
  console.log('  Checkpoints (promote with: cli promote JOB_ID --step N [--as-version]):');
  for (const c of checkpoints) {
    const inUse = c.final ? loaded === c.loraKey : promotedStep === c.step;
    const status = c.deletedAt ? `deleted ${c.deletedAt.toISOString()}` : inUse ? 'loaded by the model' : 'kept';
    const loss = typeof c.loss === 'number' ? c.loss.toFixed(4) : '-';
    console.log(`    step ${String(c.step).padStart(6)}${c.final ? ' (final)' : '        '}  loss ${loss.padEnd(8)} ${String(c.bytes).padStart(10)} B  ${status.padEnd(30)} samples ${c.sampleUrls.length}  ${c.loraUrl}`);
  }
  for (const p of attempt.state.promotions ?? []) {
    console.log(`  Promoted: step ${p.step} as ${p.mode === 'replace' ? "the job's model" : 'an additional model'} ${p.loraModelId} on ${p.promotedAt.toISOString()}${p.promotedBy ? ` by ${p.promotedBy}` : ''}`);
  }
}

async function promote(promotion: CheckpointPromotion, jobId: string, step: string | undefined, asVersion: boolean): Promise<number> {
  if (!step || !(step === 'final' || /^\d+$/.test(step))) throw new UsageError('promote needs --step N (a checkpoint step, see cli show) or --step final');
  try {
    const r = await promotion.promote({ jobId, step: step === 'final' ? 'final' : Number(step), mode: asVersion ? 'version' : 'replace', promotedBy: `cli:${process.env.USER ?? 'operator'}` });
    const what = r.mode === 'replace' ? `job ${jobId}'s model ${r.loraModelId} now loads ${r.final ? 'the final LoRA' : `the checkpoint at step ${r.step}`}` : `step ${r.step} of job ${jobId} is registered as model ${r.loraModelId}`;
    console.log(`${r.changed ? '' : 'already so: '}${what} (slug ${r.slug}, trigger word "${r.triggerWord}", file ${r.loraUrl})${r.recorded ? '' : '; the promotion was already recorded'}`);
    return 0;
  } catch (err) {
    if (err instanceof PromotionRefused) {
      process.stderr.write(`promotion refused (${err.reason}): ${err.message}\n`);
      return 1;
    }
    throw err;
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    if (err instanceof UsageError) {
      process.stderr.write(`error: ${err.message}\n${USAGE}\n`);
      process.exit(2);
    }
    process.stderr.write(`error: ${(err as Error).message}\n`);
    process.exit(1);
  },
);
