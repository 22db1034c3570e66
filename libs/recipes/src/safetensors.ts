/**
 * Pure helpers for .safetensors headers: parse the header from the first
 * bytes of a file, and check that a LoRA's tensors have the shape a ComfyUI
 * loader expects. The worker reads the bytes; this module never does I/O.
 */
import type { OutputCheckResult, SafetensorsHeader } from './contract';

/** The safetensors format caps the header at 100 MB; refuse anything larger. */
export const MAX_SAFETENSORS_HEADER_BYTES = 100 * 1024 * 1024;

/** Bytes needed to parse the header, given at least the first 8 bytes of the file. */
export function safetensorsHeaderLength(buf: Uint8Array): number {
  if (buf.length < 8) throw new Error(`safetensors: need at least 8 bytes to read the header length, got ${buf.length}`);
  const view = new DataView(buf.buffer, buf.byteOffset, 8);
  const lo = view.getUint32(0, true);
  const hi = view.getUint32(4, true);
  const n = hi * 2 ** 32 + lo;
  if (n === 0 || n > MAX_SAFETENSORS_HEADER_BYTES) {
    throw new Error(`safetensors: header length ${n} is outside 1..${MAX_SAFETENSORS_HEADER_BYTES}; not a safetensors file`);
  }
  return 8 + n;
}

/**
 * Parse the 8-byte little-endian header length and the JSON header that
 * follows. `buf` may be the whole file or just its head (at least
 * `safetensorsHeaderLength(buf)` bytes).
 */
export function parseSafetensorsHeader(buf: Uint8Array): SafetensorsHeader {
  const total = safetensorsHeaderLength(buf);
  if (buf.length < total) {
    throw new Error(`safetensors: header needs ${total} bytes but only ${buf.length} were given; read more of the file`);
  }
  const text = new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(8, total));
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new Error(`safetensors: header is not valid JSON (${(err as Error).message})`, { cause: err });
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new Error('safetensors: header must be a JSON object');
  }
  const tensors: SafetensorsHeader['tensors'] = {};
  const metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) {
        throw new Error('safetensors: __metadata__ must be an object of strings');
      }
      for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
        if (typeof v !== 'string') throw new Error(`safetensors: metadata value '${k}' must be a string`);
        metadata[k] = v;
      }
      continue;
    }
    const e = entry as { dtype?: unknown; shape?: unknown };
    if (
      typeof e !== 'object' ||
      e === null ||
      typeof e.dtype !== 'string' ||
      !Array.isArray(e.shape) ||
      !e.shape.every((d) => Number.isInteger(d) && (d as number) >= 0)
    ) {
      throw new Error(`safetensors: tensor '${name}' needs a string dtype and an integer shape`);
    }
    tensors[name] = { dtype: e.dtype, shape: e.shape as number[] };
  }
  return { tensors, metadata };
}

export interface LoraCheckRules {
  /** Every tensor key must match this (ComfyUI-compatible module prefix). */
  keyPattern: RegExp;
  /** Human-readable description of keyPattern for problem messages. */
  keyDescription: string;
  /** Accepted dtypes, e.g. F16, BF16, F32. */
  dtypes: string[];
  /** Key style: kohya (lora_down/lora_up/alpha) or peft (lora_A/lora_B). */
  style: 'kohya' | 'peft';
  /** Expected rank (network_dim), if known. */
  rank?: number;
}

const MAX_LISTED = 5;

/** Structural checks of a LoRA's tensors; returns all problems found (capped per kind). */
export function checkLoraHeader(header: SafetensorsHeader, rules: LoraCheckRules): OutputCheckResult {
  const problems: string[] = [];
  const names = Object.keys(header.tensors);
  if (names.length === 0) {
    return { ok: false, problems: ['the LoRA has no tensors'], tensorCount: 0 };
  }
  const badKeys = names.filter((n) => !rules.keyPattern.test(n));
  if (badKeys.length > 0) {
    problems.push(
      `${badKeys.length} tensor key(s) do not match ${rules.keyDescription}, e.g. ${badKeys.slice(0, MAX_LISTED).join(', ')}`,
    );
  }
  const badDtypes = names.filter((n) => !rules.dtypes.includes(header.tensors[n]!.dtype));
  if (badDtypes.length > 0) {
    const seen = [...new Set(badDtypes.map((n) => header.tensors[n]!.dtype))];
    problems.push(`unexpected dtype(s) ${seen.join(', ')} (allowed: ${rules.dtypes.join(', ')})`);
  }
  const empty = names.filter((n) => header.tensors[n]!.shape.some((d) => d === 0));
  if (empty.length > 0) problems.push(`${empty.length} tensor(s) are empty, e.g. ${empty.slice(0, MAX_LISTED).join(', ')}`);

  const [downSuffix, upSuffix] = rules.style === 'kohya' ? ['.lora_down.weight', '.lora_up.weight'] : ['.lora_A.weight', '.lora_B.weight'];
  const modules = new Map<string, { down?: number[]; up?: number[]; alpha?: number[] }>();
  for (const n of names) {
    const shape = header.tensors[n]!.shape;
    let base: string | undefined;
    let part: 'down' | 'up' | 'alpha' | undefined;
    if (n.endsWith(downSuffix)) [base, part] = [n.slice(0, -downSuffix.length), 'down'];
    else if (n.endsWith(upSuffix)) [base, part] = [n.slice(0, -upSuffix.length), 'up'];
    else if (n.endsWith('.alpha')) [base, part] = [n.slice(0, -'.alpha'.length), 'alpha'];
    if (!base || !part) continue;
    const m = modules.get(base) ?? {};
    m[part] = shape;
    modules.set(base, m);
  }
  if (modules.size === 0) problems.push(`no LoRA modules found (expected *${downSuffix} / *${upSuffix} pairs)`);
  const unpaired: string[] = [];
  const rankMismatch: string[] = [];
  const badAlpha: string[] = [];
  for (const [base, m] of modules) {
    if (!m.down || !m.up) {
      unpaired.push(base);
      continue;
    }
    const rank = m.down[0];
    if (m.up[1] !== rank || (rules.rank !== undefined && rank !== undefined && rank > rules.rank)) rankMismatch.push(base);
    if (rules.style === 'kohya' && (!m.alpha || m.alpha.length > 1 || (m.alpha.length === 1 && m.alpha[0] !== 1))) badAlpha.push(base);
  }
  if (unpaired.length > 0) problems.push(`${unpaired.length} module(s) lack a down/up pair, e.g. ${unpaired.slice(0, MAX_LISTED).join(', ')}`);
  if (rankMismatch.length > 0) {
    problems.push(`${rankMismatch.length} module(s) have inconsistent rank, e.g. ${rankMismatch.slice(0, MAX_LISTED).join(', ')}`);
  }
  if (badAlpha.length > 0) problems.push(`${badAlpha.length} module(s) lack a scalar .alpha, e.g. ${badAlpha.slice(0, MAX_LISTED).join(', ')}`);
  return { ok: problems.length === 0, problems, tensorCount: names.length };
}
