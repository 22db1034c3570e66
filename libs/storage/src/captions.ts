/**
 * The platform's dataset document shape (the fields this library reads) and
 * its caption-selection rules (DatasetDownloader.js:262-316 on the platform):
 * - candidates are the legacy `captionSets` (captions parallel to `images`)
 *   followed by `embellishments` of type 'caption' (`results[i].value`);
 * - selection order: the explicit captionSetId, then default + completed,
 *   then the first completed, then the first candidate;
 * - one caption per image that has a non-empty caption; zero captions is allowed.
 * Pure functions, no I/O.
 */

/** Ids may be ObjectIds or strings; anything with a sensible toString works. */
export type DocId = string | { toString(): string };

export interface PlatformCaptionSet {
  _id?: DocId;
  method?: string;
  captions?: (string | null | undefined)[];
  isDefault?: boolean;
  status?: string;
  [k: string]: unknown;
}

export interface PlatformEmbellishment {
  _id?: DocId;
  type?: string;
  method?: string;
  status?: string;
  isDefault?: boolean;
  results?: ({ value?: unknown; [k: string]: unknown } | null | undefined)[];
  [k: string]: unknown;
}

export interface PlatformDatasetDoc {
  _id?: DocId;
  name?: string;
  /** Absolute public URLs. */
  images: string[];
  captionSets?: PlatformCaptionSet[];
  embellishments?: PlatformEmbellishment[];
  [k: string]: unknown;
}

export interface CaptionCandidate {
  id: string;
  origin: 'captionSet' | 'embellishment';
  isDefault: boolean;
  completed: boolean;
  /** Parallel to dataset.images; '' where there is no caption. */
  captions: string[];
}

export interface CaptionSelection {
  /** Parallel to dataset.images; '' where the image has no caption. */
  captions: string[];
  /** e.g. 'captionSet:<id> (default+completed)', or 'none'. */
  source: string;
  candidate: CaptionCandidate | null;
}

function idOf(x: { _id?: DocId }, fallback: string): string {
  return x._id === undefined || x._id === null ? fallback : String(x._id);
}

function text(v: unknown): string {
  return typeof v === 'string' ? v.trim() : '';
}

export function captionCandidates(dataset: PlatformDatasetDoc): CaptionCandidate[] {
  const n = dataset.images.length;
  const out: CaptionCandidate[] = [];
  (dataset.captionSets ?? []).forEach((s, i) => {
    out.push({
      id: idOf(s, `captionSets[${i}]`),
      origin: 'captionSet',
      isDefault: s.isDefault === true,
      completed: s.status === 'completed',
      captions: Array.from({ length: n }, (_, j) => text(s.captions?.[j])),
    });
  });
  (dataset.embellishments ?? []).forEach((e, i) => {
    if (e.type !== 'caption') return;
    out.push({
      id: idOf(e, `embellishments[${i}]`),
      origin: 'embellishment',
      isDefault: e.isDefault === true,
      completed: e.status === 'completed',
      captions: Array.from({ length: n }, (_, j) => text(e.results?.[j]?.value)),
    });
  });
  return out;
}

export function selectCaptions(dataset: PlatformDatasetDoc, captionSetId?: string): CaptionSelection {
  const all = captionCandidates(dataset);
  const empty = dataset.images.map(() => '');
  let chosen: CaptionCandidate | undefined;
  let why = '';
  let note = '';
  if (captionSetId) {
    chosen = all.find((c) => c.id === captionSetId);
    why = 'requested';
    if (!chosen) note = ` (requested ${captionSetId} not found)`;
  }
  if (!chosen) {
    chosen = all.find((c) => c.isDefault && c.completed);
    why = 'default+completed';
  }
  if (!chosen) {
    chosen = all.find((c) => c.completed);
    why = 'first completed';
  }
  if (!chosen) {
    chosen = all[0];
    why = 'first';
  }
  if (!chosen) return { captions: empty, source: `none${note}`, candidate: null };
  return { captions: chosen.captions, source: `${chosen.origin}:${chosen.id} (${why})${note}`, candidate: chosen };
}
