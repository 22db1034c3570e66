/**
 * Control images of an edit-model dataset (FLUX.1 Kontext `concept` mode):
 * which control image belongs to which target image, checked before any
 * charge. Pure: the worker passes the platform's dataset document and, once
 * downloaded, the image sizes it read from the files' headers.
 *
 * The platform's two stores (DatasetDownloader.js on the platform, :71-133 and
 * `_downloadControlImages`):
 * - current: an `embellishments` entry of type `control` (the job's
 *   `controlSetId`, which must name a completed one; without it, the first
 *   completed one), whose `results[i].value` is the control URL of `images[i]`;
 * - legacy: `controlImages: [{ sourceFilename, url }]`, where `sourceFilename`
 *   is the platform's download name of the target (`001.jpg`, `002.png`: the
 *   1-based index padded to 3 digits plus the URL path's extension, `.jpg`
 *   when it has none of .jpg/.jpeg/.png/.webp/.gif).
 * The embellishment wins when it has any result, as on the platform.
 *
 * Rules (the platform only logged these and trained on whatever matched):
 * - a requested control set (`controlSetId`) that is not a completed control
 *   set of the dataset is an error naming the set and its state: the platform
 *   silently trained on the first completed set instead, i.e. on other pairs
 *   than the user chose;
 * - every target image needs exactly one control image: a missing one is an
 *   error naming the images;
 * - two legacy entries for the same target are an error (which one is meant?);
 * - a control that matches no target (a legacy `sourceFilename` that names no
 *   image, or embellishment results beyond the image list) is an error too:
 *   it means the control set was made for another version of the dataset, so
 *   the pairs that do match may be shifted as well. Refusing costs the user a
 *   resubmit; training on shifted pairs costs the whole job.
 * - after the download, a target and its control must have the same aspect
 *   ratio (within 2 %): musubi resizes a control to its target's bucket, so
 *   another shape would train on a distorted reference.
 */

export interface ControlImageSource {
  /** Index of the target in `dataset.images`. */
  index: number;
  targetUrl: string;
  controlUrl: string;
}

export interface ControlPairing {
  /** One per target image, in dataset order. */
  pairs: ControlImageSource[];
  /** Where the controls came from, for the job log, e.g. 'embellishment:<id> (requested)'. */
  source: string;
  /**
   * The control set's transformation prompt, when it has one: the platform
   * trains every pair on it instead of the captions (its DatasetDownloader
   * `_writeConceptCaptions`). Taken, as there, from the first linked
   * generation output's request (`ControlPairOptions.generationPrompt`), else
   * from `embellishment.config.prompt`.
   */
  prompt?: string;
  /** Where `prompt` came from, for the job log. */
  promptSource?: 'generation-output' | 'control-set-config';
}

/** What the worker read beside the dataset document. */
export interface ControlPairOptions {
  /**
   * The prompt of the first generation output linked from the chosen control
   * set's results that has one (`generationOutputs.requestPayload`, see
   * `conceptPromptOutputIds` and `promptOfRequestPayload`). Wins over
   * `config.prompt`, as on the platform.
   */
  generationPrompt?: string;
}

export type ControlPairProblemKind = 'control-set-unavailable' | 'no-control-set' | 'missing-control' | 'duplicate-control' | 'unmatched-control' | 'invalid-control-url';

export interface ControlPairProblem {
  kind: ControlPairProblemKind;
  message: string;
}

export type ControlPairResult = { ok: true; pairing: ControlPairing } | { ok: false; problems: ControlPairProblem[] };

/** The fields of the platform's dataset document this reads. */
export interface ControlDatasetDoc {
  images?: unknown;
  controlImages?: unknown;
  embellishments?: unknown;
}

/** Most names listed in one message; the count says how many more. */
const NAMES_SHOWN = 8;

/** The platform's download name of target `index` (DatasetDownloader `_downloadImages` / `_getExtension`). */
export function platformSourceFilename(url: string, index: number): string {
  let ext = '.jpg';
  try {
    const m = /\.[^./]+$/.exec(new URL(url).pathname);
    const e = m ? m[0].toLowerCase() : '';
    if (['.jpg', '.jpeg', '.png', '.webp', '.gif'].includes(e)) ext = e;
  } catch {
    // An unparsable URL gets the platform's default; the URL checks reject it separately.
  }
  return `${String(index + 1).padStart(3, '0')}${ext}`;
}

function list(names: string[]): string {
  const shown = names.slice(0, NAMES_SHOWN).join(', ');
  return names.length > NAMES_SHOWN ? `${shown} and ${names.length - NAMES_SHOWN} more` : shown;
}

function targetName(url: string, index: number): string {
  return `image ${index + 1} (${platformSourceFilename(url, index)})`;
}

interface EmbellishmentLike {
  _id?: unknown;
  type?: unknown;
  status?: unknown;
  results?: unknown;
  config?: unknown;
}

function asArray(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [];
}

function isControlSet(e: EmbellishmentLike): boolean {
  return e.type === 'control';
}

function idOf(e: EmbellishmentLike): string | undefined {
  return e._id !== undefined && e._id !== null ? String(e._id) : undefined;
}

/** A value from the dataset document, made safe and short for a message. */
function shown(v: unknown): string {
  return JSON.stringify(String(v).slice(0, 64));
}

type ControlSetChoice = { set: EmbellishmentLike; why: string } | { problem: ControlPairProblem } | undefined;

/**
 * The control set to train on: the requested one, which must be a completed
 * control set of this dataset (anything else is refused, naming the set and
 * its state), or, when none was requested, the first completed one (the
 * platform's default). undefined: no request and no completed set.
 */
function chooseControlSet(doc: ControlDatasetDoc, controlSetId: string | undefined): ControlSetChoice {
  const all = asArray(doc.embellishments).filter((e): e is EmbellishmentLike => !!e && typeof e === 'object');
  const completed = all.filter((e) => isControlSet(e) && e.status === 'completed');
  if (!controlSetId) {
    const first = completed[0];
    return first ? { set: first, why: 'first completed' } : undefined;
  }
  const asked = all.find((e) => idOf(e) === controlSetId);
  if (asked && isControlSet(asked) && asked.status === 'completed') return { set: asked, why: 'requested' };
  const state = !asked
    ? 'is not a control set of this dataset'
    : !isControlSet(asked)
      ? `is a ${shown(asked.type ?? 'untyped')} set, not a control set`
      : `is ${asked.status === undefined || asked.status === null ? 'without a status' : shown(asked.status)}, not completed`;
  const ids = completed.map(idOf).filter((id): id is string => id !== undefined);
  const others = ids.length > 0 ? `This dataset's completed control sets: ${list(ids.map(shown))}.` : 'This dataset has no completed control set.';
  const wait = asked && isControlSet(asked) ? 'Wait until it has completed, or choose' : 'Choose';
  return {
    problem: {
      kind: 'control-set-unavailable',
      message: `The requested control set ${shown(controlSetId)} ${state}, so there are no pairs to train on. ${others} ${wait} a completed control set (or none, to train on the first completed one) and submit again.`,
    },
  };
}

/**
 * The generation outputs whose request may carry the concept prompt: the
 * `generationOutputId` of each result of the control set `resolveControlPairs`
 * would choose, in result order (the platform takes the first one that has a
 * prompt: DatasetDownloader `_extractControlPromptFromGenerationOutputs`).
 * [] for the legacy `controlImages`, which link none.
 */
export function conceptPromptOutputIds(doc: ControlDatasetDoc, controlSetId?: string): string[] {
  const chosen = chooseControlSet(doc, controlSetId);
  if (!chosen || 'problem' in chosen) return [];
  const ids: string[] = [];
  for (const r of asArray(chosen.set.results)) {
    const id = r && typeof r === 'object' ? (r as { generationOutputId?: unknown }).generationOutputId : undefined;
    // An ObjectId or its hex string; anything else cannot name a document.
    const text = id !== undefined && id !== null && typeof id !== 'boolean' ? String(id) : '';
    if (text && !ids.includes(text)) ids.push(text);
  }
  return ids;
}

/**
 * The prompt of a generation output's `requestPayload`: `input_prompt`, else
 * `prompt`, else `text` (the platform's order), the first non-blank string.
 */
export function promptOfRequestPayload(payload: unknown): string | undefined {
  if (!payload || typeof payload !== 'object') return undefined;
  const p = payload as Record<string, unknown>;
  for (const field of ['input_prompt', 'prompt', 'text']) {
    const v = p[field];
    if (typeof v === 'string' && v.trim()) return v.trim();
  }
  return undefined;
}

/**
 * Pair every target image of a concept dataset with its control image, or say
 * everything that is wrong. Offline: no URL is fetched (the URL rules and
 * sizes are checked by the dataset fetcher's own checks and `checkControlSizes`).
 */
export function resolveControlPairs(doc: ControlDatasetDoc, controlSetId?: string, options: ControlPairOptions = {}): ControlPairResult {
  const images = asArray(doc.images).map((u) => String(u));
  const chosen = chooseControlSet(doc, controlSetId);
  if (chosen && 'problem' in chosen) return { ok: false, problems: [chosen.problem] };
  const results = chosen ? asArray(chosen.set.results) : [];
  if (chosen && results.some((r) => r !== null && r !== undefined)) {
    const paired = pairFromEmbellishment(images, results, `embellishment:${String(chosen.set._id ?? '?')} (${chosen.why})`);
    if (paired.ok) Object.assign(paired.pairing, conceptPrompt(chosen.set, options));
    return paired;
  }
  const legacy = asArray(doc.controlImages);
  if (legacy.length > 0) return pairFromLegacy(images, legacy);
  return {
    ok: false,
    problems: [
      {
        kind: 'no-control-set',
        message:
          'Concept training needs a control image for every dataset image, and this dataset has none (no completed control set and no control images). Generate a control set for the dataset, or choose the style/subject mode.',
      },
    ],
  };
}

/** The set's transformation prompt: the linked generation's, else `config.prompt` (DatasetDownloader.js, concept mode). */
function conceptPrompt(set: EmbellishmentLike, options: ControlPairOptions): Pick<ControlPairing, 'prompt' | 'promptSource'> {
  const generated = options.generationPrompt?.trim();
  if (generated) return { prompt: generated, promptSource: 'generation-output' };
  const configured = (set.config as { prompt?: unknown } | undefined)?.prompt;
  if (typeof configured === 'string' && configured.trim()) return { prompt: configured.trim(), promptSource: 'control-set-config' };
  return {};
}

function controlUrlOf(v: unknown): string {
  return typeof v === 'string' ? v.trim() : '';
}

function pairFromEmbellishment(images: string[], results: unknown[], source: string): ControlPairResult {
  const problems: ControlPairProblem[] = [];
  const pairs: ControlImageSource[] = [];
  const missing: string[] = [];
  images.forEach((url, i) => {
    const r = results[i] as { value?: unknown } | null | undefined;
    const controlUrl = controlUrlOf(r?.value);
    if (!controlUrl) missing.push(targetName(url, i));
    else pairs.push({ index: i, targetUrl: url, controlUrl });
  });
  if (missing.length > 0) {
    problems.push({
      kind: 'missing-control',
      message: `${missing.length} of ${images.length} images have no control image in control set ${source}: ${list(missing)}. Complete the control set (or remove those images) and submit again.`,
    });
  }
  const extra = results.slice(images.length).filter((r) => controlUrlOf((r as { value?: unknown } | null)?.value) !== '');
  if (extra.length > 0) {
    problems.push({
      kind: 'unmatched-control',
      message: `Control set ${source} has ${results.length} results for ${images.length} images: ${extra.length} control image${extra.length > 1 ? 's' : ''} belong to no image, so the set was made for another version of the dataset and its pairs may be shifted. Regenerate the control set and submit again.`,
    });
  }
  return problems.length > 0 ? { ok: false, problems } : { ok: true, pairing: { pairs, source } };
}

function pairFromLegacy(images: string[], legacy: unknown[]): ControlPairResult {
  const problems: ControlPairProblem[] = [];
  const byName = new Map<string, string[]>();
  const unmatched: string[] = [];
  const names = images.map((url, i) => platformSourceFilename(url, i));
  const known = new Set(names);
  for (const entry of legacy) {
    const e = (entry ?? {}) as { sourceFilename?: unknown; url?: unknown };
    const name = typeof e.sourceFilename === 'string' ? e.sourceFilename.trim() : '';
    const url = controlUrlOf(e.url);
    if (!name || !known.has(name)) {
      unmatched.push(name ? JSON.stringify(name.slice(0, 60)) : '(no sourceFilename)');
      continue;
    }
    if (!url) {
      problems.push({ kind: 'invalid-control-url', message: `The control image for ${name} has no URL. Add the control image again and submit again.` });
      continue;
    }
    byName.set(name, [...(byName.get(name) ?? []), url]);
  }
  const pairs: ControlImageSource[] = [];
  const missing: string[] = [];
  const duplicated: string[] = [];
  images.forEach((url, i) => {
    const found = byName.get(names[i]) ?? [];
    if (found.length === 0) missing.push(targetName(url, i));
    else if (found.length > 1) duplicated.push(`${targetName(url, i)} has ${found.length}`);
    else pairs.push({ index: i, targetUrl: url, controlUrl: found[0] });
  });
  if (missing.length > 0) {
    problems.push({
      kind: 'missing-control',
      message: `${missing.length} of ${images.length} images have no control image (controlImages matched by sourceFilename): ${list(missing)}. Add their control images and submit again.`,
    });
  }
  if (duplicated.length > 0) {
    problems.push({
      kind: 'duplicate-control',
      message: `Some images have more than one control image, and Kontext trains on exactly one: ${list(duplicated)}. Keep one control image per image and submit again.`,
    });
  }
  if (unmatched.length > 0) {
    problems.push({
      kind: 'unmatched-control',
      message: `${unmatched.length} control image${unmatched.length > 1 ? 's name' : ' names'} no image of the dataset by sourceFilename: ${list(unmatched)}. The control images were made for another version of the dataset; add them again and submit again.`,
    });
  }
  return problems.length > 0 ? { ok: false, problems } : { ok: true, pairing: { pairs, source: 'controlImages (legacy, by sourceFilename)' } };
}

export interface ImageSize {
  width: number;
  height: number;
}

/** Largest relative difference of aspect ratios a pair may have (musubi resizes the control to the target's bucket). */
export const CONTROL_ASPECT_TOLERANCE = 0.02;

/**
 * Pairs whose target and control differ in shape, as one message per pair
 * (at most `maxShown`, then a count), or [] when all agree. Sizes come from
 * the files' headers (read before the charge, and again after the download);
 * a pair without both sizes is not judged.
 */
export function checkControlSizes(pairs: { index: number; target?: ImageSize; control?: ImageSize }[], maxShown: number = NAMES_SHOWN): string[] {
  const bad: string[] = [];
  for (const p of pairs) {
    if (!p.target || !p.control || p.target.height <= 0 || p.control.height <= 0) continue;
    const a = p.target.width / p.target.height;
    const b = p.control.width / p.control.height;
    if (Math.abs(a - b) / Math.max(a, b) > CONTROL_ASPECT_TOLERANCE) {
      bad.push(`image ${p.index + 1} is ${p.target.width}×${p.target.height} but its control is ${p.control.width}×${p.control.height}`);
    }
  }
  if (bad.length === 0) return [];
  const shown = bad.slice(0, maxShown);
  if (bad.length > maxShown) shown.push(`and ${bad.length - maxShown} more pairs`);
  return shown;
}

/**
 * A 64×64 mid-grey RGB PNG (132 bytes, base64): the neutral control image of
 * modes without a reference (contract ControlImagesNeed 'blank'). The worker
 * writes it once per target, named after the target's stem.
 */
export const BLANK_CONTROL_PNG_BASE64 =
  'iVBORw0KGgoAAAANSUhEUgAAAEAAAABACAIAAAAlC+aJAAAAS0lEQVR42u3PMQ0AAAwDoEqv9ErYvQQckD4XAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAYHLAB8+AWnmfUycAAAAAElFTkSuQmCC';

/** The control file name of a target: its stem plus the control's own extension, so musubi pairs them (same stem). */
export function controlFileNameFor(targetFileName: string, controlExtension: string): string {
  const stem = targetFileName.replace(/\.[^.]+$/, '');
  const ext = controlExtension.replace(/^\./, '').toLowerCase();
  if (!/^[A-Za-z0-9_-]+$/.test(stem) || !/^[a-z0-9]+$/.test(ext)) {
    throw new Error(`control file name: target ${JSON.stringify(targetFileName)} or extension ${JSON.stringify(controlExtension)} is not a plain name`);
  }
  return `${stem}.${ext}`;
}
