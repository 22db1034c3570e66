/**
 * Mapping from the platform's `trainingJobs` documents to a recipe's raw
 * parameter input. The platform stores some numbers as strings and never
 * validated them; everything here is still validated by recipe.validate().
 */

/** trainingJobs field → recipe parameter name (they coincide today; kept explicit on purpose). */
export const PLATFORM_PARAMETER_FIELDS = {
  steps: 'steps',
  learningRate: 'learningRate',
  batchSize: 'batchSize',
  resolution: 'resolution',
  loraRank: 'loraRank',
  loraAlpha: 'loraAlpha',
  loraDropout: 'loraDropout',
  /** KONTEXT only ('style_subject' | 'concept'); the platform drops it when null. */
  trainingMode: 'trainingMode',
} as const;

/** Fields passed through as text (the others are numbers the platform may store as strings). */
const TEXT_FIELDS: ReadonlySet<string> = new Set(['trainingMode']);

function coerceNumber(v: unknown): unknown {
  if (typeof v === 'number') return v;
  if (typeof v === 'string') {
    const t = v.trim();
    if (/^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(t)) return Number(t);
    return v; // let validation report it with the field path
  }
  return v;
}

/** '1024', '1024x1024', '1024,1024', '[512, 768, 1024]' → 1024 (the largest side). */
function coerceResolution(v: unknown): unknown {
  if (typeof v === 'number') return v;
  if (Array.isArray(v) && v.every((x) => typeof x === 'number' || typeof x === 'string')) {
    const nums = v.map((x) => Number(x)).filter((x) => Number.isFinite(x));
    return nums.length > 0 ? Math.max(...nums) : v;
  }
  if (typeof v === 'string') {
    const nums = (v.match(/\d+/g) ?? []).map(Number);
    return nums.length > 0 ? Math.max(...nums) : v;
  }
  return v;
}

function isEmpty(v: unknown): boolean {
  return v === undefined || v === null || (typeof v === 'string' && v.trim() === '');
}

/**
 * Build a recipe's raw parameter input from a trainingJobs document:
 * `steps, learningRate, batchSize, resolution, loraRank, loraAlpha,
 * loraDropout` (numbers or numeric strings; empty values skipped) and
 * `trainingMode` (text), then the
 * optional `parameters` object (our own field, recipe parameter names)
 * overriding them. Unknown keys inside `parameters` are kept so validation
 * rejects them with their path.
 */
export function jobParametersFromPlatformDoc(doc: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [docField, param] of Object.entries(PLATFORM_PARAMETER_FIELDS)) {
    const v = doc[docField];
    if (isEmpty(v)) continue;
    out[param] = TEXT_FIELDS.has(docField) ? (typeof v === 'string' ? v.trim() : v) : docField === 'resolution' ? coerceResolution(v) : coerceNumber(v);
  }
  const extra = doc['parameters'];
  if (extra !== undefined && extra !== null) {
    if (typeof extra !== 'object' || Array.isArray(extra)) {
      throw new Error('trainingJobs.parameters must be an object of recipe parameters');
    }
    for (const [k, v] of Object.entries(extra as Record<string, unknown>)) {
      if (v === undefined) continue;
      out[k] = v;
    }
  }
  return out;
}
