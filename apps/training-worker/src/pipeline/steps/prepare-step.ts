/**
 * prepare: the recipe, validated parameters, sanitized trigger word and
 * output name, the paying account bound from the platform's account records,
 * the dataset (exists, may be used by that account, has a size the engine can
 * train on) and the quote. Reads only: nothing is charged yet, so every
 * problem found here costs the user nothing. Everything that can be checked
 * without the network is checked here, before the charge, and so are the
 * shapes of concept pairs (from the first bytes of each file).
 */
import { inject, injectable } from 'tsyringe';
import { DatasetRepository, UserCoreReader } from '@stationthis/db';
import { DATASET_FETCH_PORT, ImageHeaderProbe, type DatasetFetchPort, type ImageDimensions } from '@stationthis/storage';
import {
  checkControlSizes,
  CONTROL_ASPECT_TOLERANCE,
  datasetSizeCheck,
  recipeForModelType,
  resolveControlPairs,
  sanitizeOutputName,
  type ControlPairing,
  sanitizeTriggerWord,
  summarizeDataset,
  type Recipe,
} from '@stationthis/recipes';
import { WORKER_CONFIG } from '../../tokens';
import type { WorkerConfig } from '../../config/worker-config';
import { JobFailure } from '../failures';
import type { TrainingRequest } from '../training-request';
import type { Payer, Prepared } from './attempt';
import { ConceptPromptReader } from './concept-prompt';

const NOTHING_CHARGED = 'Nothing was charged.';
/** Mismatched pairs named in one failure reason (the reason travels in events and webhooks: bounded). */
const PAIRS_NAMED = 20;

export interface PrepareOptions {
  /** An earlier claim of this platform attempt holds the charge or uploaded the LoRA (see run). */
  paid?: boolean;
  /** The concept prompt an earlier claim resolved (attempt state `conceptPrompt`). */
  conceptPrompt?: { text: string | null; source?: 'generation-output' | 'control-set-config' };
}

/** Header reads of concept pairs before the charge: files at once, per-file timeout, and the time all of them may take. */
const PAIR_PROBE = { concurrency: 4, timeoutMs: 10_000, budgetMs: 60_000 };

@injectable()
export class PrepareStep {
  constructor(
    private readonly datasets: DatasetRepository,
    private readonly users: UserCoreReader,
    @inject(DATASET_FETCH_PORT) private readonly sources: Pick<DatasetFetchPort, 'checkSources'>,
    // Optional: the unit tests build this step without a config (no operator-only recipes enabled).
    @inject(WORKER_CONFIG) private readonly config?: Pick<WorkerConfig, 'recipesEnabled'>,
    // Optional: the unit tests build this step without one (no network); concept pairs' shapes are then checked after the download only.
    @inject(ImageHeaderProbe) private readonly headers?: Pick<ImageHeaderProbe, 'probe'>,
    // Optional: the unit tests build this step without a database; concept captions then come from the control set's config.prompt.
    @inject(ConceptPromptReader) private readonly conceptPrompts?: Pick<ConceptPromptReader, 'read'>,
  ) {}

  /**
   * `paid`: an earlier claim of this platform attempt already holds the charge
   * (or uploaded the LoRA). The pair shapes were checked before that charge
   * and are not probed again: a control URL failing now (deleted file, CDN
   * hiccup) must not turn a paid, maybe trained, job into a "nothing was
   * charged" failure; the download checks what it fetches.
   * `conceptPrompt`: the prompt the first claim resolved (attempt state), used
   * instead of reading the generation outputs again.
   */
  async run(request: TrainingRequest, opts: PrepareOptions = {}): Promise<Prepared> {
    let recipe: Recipe;
    try {
      recipe = recipeForModelType(request.modelType, { enabled: this.config?.recipesEnabled ?? [] });
    } catch (e) {
      throw new JobFailure('user-input', `Unsupported model type "${request.modelType}": ${(e as Error).message}`);
    }
    if (request.parametersError) {
      throw new JobFailure('user-input', `Invalid training parameters: ${request.parametersError}. Write them as an object, e.g. {"steps": 30}, and submit again. ${NOTHING_CHARGED}`);
    }
    const validated = recipe.validate(request.rawParameters);
    if (!validated.ok) {
      const issues = validated.issues.map((i) => `${i.path}: ${i.message}${i.allowed ? ` (allowed: ${i.allowed})` : ''}`);
      throw new JobFailure('user-input', `Invalid training parameters: ${issues.join('; ')}. Fix them and submit again.`);
    }
    let triggerWord: string;
    try {
      triggerWord = sanitizeTriggerWord(request.rawTriggerWord);
    } catch (e) {
      throw new JobFailure('user-input', `The trigger word "${request.rawTriggerWord.slice(0, 40)}" cannot be used: ${(e as Error).message}. Use letters, digits, "_" or "-".`);
    }
    let outputName: string;
    try {
      outputName = sanitizeOutputName(request.rawModelName ?? triggerWord);
    } catch {
      outputName = sanitizeOutputName(triggerWord);
    }

    const payer = await this.bindPayer(request);

    if (!request.datasetId) throw new JobFailure('user-input', 'The job has no dataset. Choose a dataset and submit again.');
    const dataset = await this.datasets.findById(request.datasetId);
    if (!dataset) throw new JobFailure('dataset', `Dataset ${request.datasetId} does not exist (it may have been deleted). Choose another dataset.`);
    const datasetOwner = String(dataset.ownerAccountId ?? '');
    const visibility = String(dataset.visibility ?? 'private');
    const granted = Array.isArray(dataset.accessControl) && dataset.accessControl.some((id: unknown) => String(id) === payer.masterAccountId);
    if (datasetOwner !== payer.masterAccountId && visibility !== 'public' && visibility !== 'unlisted' && !granted) {
      throw new JobFailure('dataset', `Dataset "${dataset.name ?? request.datasetId}" is private to another account. Use your own dataset or ask its owner to share it.`);
    }
    const images: unknown[] = Array.isArray(dataset.images) ? dataset.images : [];
    const summary = summarizeDataset(images.map((url) => ({ url: String(url) })));
    const size = datasetSizeCheck(recipe, summary);
    if (size.error) throw new JobFailure('dataset', size.error);
    // Every URL, key and declared size, with no network: the same rules the fetch applies later, before anything is charged.
    const problems = this.sources.checkSources(dataset);
    if (problems.length > 0) {
      const more = problems.length > 1 ? ` (${problems.length - 1} more problem${problems.length > 2 ? 's' : ''} after this one)` : '';
      throw new JobFailure('dataset', `The dataset cannot be used: ${problems[0].message}${more} ${NOTHING_CHARGED}`);
    }
    const controls = await this.checkControls(recipe, validated.value, dataset, request.controlSetId, opts.conceptPrompt);
    if (controls?.pairing && !opts.paid) await this.checkPairShapes(recipe, controls.pairing);
    const quote = recipe.quote(validated.value as never, summary);
    return { recipe, parameters: validated.value as Record<string, unknown>, triggerWord, outputName, dataset, quote, payer, warnings: size.warnings, ...(controls ? { controls } : {}) };
  }

  /**
   * A recipe that trains on pairs (Kontext concept mode): every image has
   * exactly one control image and every control URL passes the same offline
   * rules as the dataset's, before the charge. Their shapes are checked
   * next (checkPairShapes), and again after the download (inputs step).
   */
  private async checkControls(
    recipe: Recipe,
    parameters: unknown,
    dataset: Prepared['dataset'],
    controlSetId: string | undefined,
    resolved: PrepareOptions['conceptPrompt'],
  ): Promise<Prepared['controls']> {
    const need = recipe.controlImagesFor?.(parameters as never);
    if (!need) return undefined;
    if (need.source !== 'paired') return { need };
    // The platform's caption for every pair: the linked generation's prompt, else the set's config.prompt
    // (read once, before the charge; later claims reuse what the first resolved).
    const generationPrompt = resolved ? undefined : await this.conceptPrompts?.read(dataset as never, controlSetId);
    const paired = resolveControlPairs(dataset as never, controlSetId, generationPrompt ? { generationPrompt } : {});
    if (paired.ok && resolved) {
      if (resolved.text === null) delete paired.pairing.prompt;
      else paired.pairing.prompt = resolved.text;
      if (resolved.source) paired.pairing.promptSource = resolved.source;
      else delete paired.pairing.promptSource;
    }
    if (!paired.ok) {
      throw new JobFailure('dataset', `The dataset cannot be used for ${recipe.displayName} concept training: ${paired.problems.map((p) => p.message).join(' ')} ${NOTHING_CHARGED}`);
    }
    const problems = this.sources.checkSources({ images: paired.pairing.pairs.map((x) => x.controlUrl) });
    if (problems.length > 0) {
      throw new JobFailure('dataset', `A control image cannot be used: ${problems[0].message.replace(/^Image /, 'Control image ')} ${NOTHING_CHARGED}`);
    }
    return { need, pairing: paired.pairing };
  }

  /**
   * Every concept pair's target and control have the same shape, read from
   * the first 64 KiB of each file (the dataset fetcher's URL rules and header
   * reader): a mismatch or a file that is not a readable image is refused
   * here, before the charge, with every mismatched pair named. A header that
   * cannot be read now (network, timeout, a header further in) is not the
   * user's fault: the inputs step checks it again after the download.
   */
  private async checkPairShapes(recipe: Recipe, pairing: ControlPairing): Promise<void> {
    if (!this.headers) return;
    const items = pairing.pairs.flatMap((p) => [
      { url: p.targetUrl, index: p.index },
      { url: p.controlUrl, index: p.index },
    ]);
    const read = await this.headers.probe(items, { concurrency: PAIR_PROBE.concurrency, timeoutMs: PAIR_PROBE.timeoutMs, signal: AbortSignal.timeout(PAIR_PROBE.budgetMs) });
    const refused = read.flatMap((r, i) => (r.status === 'refused' ? [i % 2 === 0 ? r.message : r.message.replace(/^Image /, 'Control image ')] : []));
    if (refused.length > 0) {
      const more = refused.length > 1 ? ` (${refused.length - 1} more problem${refused.length > 2 ? 's' : ''} after this one)` : '';
      throw new JobFailure('dataset', `The dataset cannot be used for ${recipe.displayName} concept training: ${refused[0]}${more} ${NOTHING_CHARGED}`);
    }
    const size = (i: number): ImageDimensions | undefined => {
      const r = read[i];
      return r.status === 'ok' ? r.dimensions : undefined;
    };
    // Every mismatched pair is named: the user has to fix each one.
    const mismatched = checkControlSizes(
      pairing.pairs.map((p, k) => ({ index: p.index, target: size(2 * k), control: size(2 * k + 1) })),
      PAIRS_NAMED,
    );
    if (mismatched.length > 0) {
      throw new JobFailure(
        'dataset',
        `The dataset cannot be used for ${recipe.displayName} concept training: each control image must have the same shape as its image (aspect ratio within ${CONTROL_ASPECT_TOLERANCE * 100} %), because the trainer resizes the control to its image and a different shape would be trained distorted. ${mismatched.length} pair${mismatched.length > 1 ? 's differ' : ' differs'}: ${mismatched.join('; ')}. Crop or replace those control images (or regenerate the control set) so each has its image's shape, and submit again. ${NOTHING_CHARGED}`,
      );
    }
  }

  /**
   * The paying account and wallet come from `userCore`, the platform's account
   * records, where the job only names them: the platform writes one
   * masterAccountId into both `userId` and `ownerAccountId` and that
   * account's wallet into `walletAddress` (TrainingService.create). A job
   * whose fields disagree with each other or with the account was not written
   * by the platform for that account, and must not move anyone's points.
   */
  private async bindPayer(request: TrainingRequest): Promise<Payer> {
    const claimed = request.ownerAccountId;
    if (!claimed) throw new JobFailure('user-input', `The job names no account (ownerAccountId and userId are empty). Submit it again from the platform. ${NOTHING_CHARGED}`);
    if (request.userId !== undefined && request.userId !== claimed) {
      throw new JobFailure('user-input', `The job names two different accounts (userId ${short(request.userId)}, ownerAccountId ${short(claimed)}); the platform writes the same account into both. Submit it again from the platform. ${NOTHING_CHARGED}`);
    }
    const user = await this.users.findById(claimed);
    if (!user) throw new JobFailure('user-input', `Account ${short(claimed)} does not exist on the platform (no userCore record). Submit the job again from your account. ${NOTHING_CHARGED}`);
    const masterAccountId = String(user._id);
    const wallets = this.users.walletAddresses(user);
    if (request.walletAddress !== undefined) {
      const wallet = request.walletAddress.trim().toLowerCase();
      if (!wallets.includes(wallet)) {
        throw new JobFailure('user-input', `The job's wallet ${short(wallet)} is not linked to account ${short(masterAccountId)}. Connect it to your account or submit the job again from the platform. ${NOTHING_CHARGED}`);
      }
      return { masterAccountId, walletAddress: wallet };
    }
    return { masterAccountId, walletAddress: this.users.primaryWallet(user) };
  }
}

/** Enough of an id or address to recognise it in a message, never a whole hostile string. */
function short(s: string): string {
  const t = s.length > 14 ? `${s.slice(0, 10)}…${s.slice(-4)}` : s;
  return JSON.stringify(t);
}
