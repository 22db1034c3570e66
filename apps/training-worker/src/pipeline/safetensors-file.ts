/**
 * Reading and amending the header of a .safetensors file on disk. Engines do
 * not know our metadata (trigger word, base model, job id), so it is merged
 * into `__metadata__` after training; tensor bytes are copied unchanged.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { open, rename, rm, stat } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { parseSafetensorsHeader, SafetensorsHeader } from '@stationthis/recipes';

const MAX_HEADER_BYTES = 100 * 1024 * 1024;

async function readRawHeader(path: string): Promise<{ length: number; json: Record<string, unknown>; header: SafetensorsHeader }> {
  const fh = await open(path, 'r');
  try {
    const len = Buffer.alloc(8);
    const { bytesRead } = await fh.read(len, 0, 8, 0);
    if (bytesRead < 8) throw new Error('file is shorter than the 8-byte header length');
    const n = Number(len.readBigUInt64LE(0));
    if (n <= 1 || n > MAX_HEADER_BYTES) throw new Error(`implausible header length ${n}`);
    const buf = Buffer.alloc(8 + n);
    const read = await fh.read(buf, 0, 8 + n, 0);
    if (read.bytesRead < 8 + n) throw new Error('file ends inside its header');
    const header = parseSafetensorsHeader(buf);
    return { length: n, json: JSON.parse(buf.subarray(8).toString('utf8')) as Record<string, unknown>, header };
  } finally {
    await fh.close();
  }
}

export async function readSafetensorsHeader(path: string): Promise<SafetensorsHeader> {
  return (await readRawHeader(path)).header;
}

/**
 * True when the file holds every byte its header promises (an engine still
 * writing, or a torn file after a crash, is shorter). Reads the header only.
 */
export async function safetensorsComplete(path: string): Promise<{ ok: true; bytes: number } | { ok: false; why: string }> {
  const size = (await stat(path).catch(() => null))?.size;
  if (size === undefined) return { ok: false, why: 'the file does not exist' };
  let raw: Awaited<ReturnType<typeof readRawHeader>>;
  try {
    raw = await readRawHeader(path);
  } catch (e) {
    return { ok: false, why: (e as Error).message };
  }
  let end = 0;
  for (const [name, t] of Object.entries(raw.json)) {
    if (name === '__metadata__') continue;
    const off = (t as { data_offsets?: unknown } | null)?.data_offsets;
    if (!Array.isArray(off) || off.length !== 2) return { ok: false, why: `tensor ${name} has no data_offsets` };
    end = Math.max(end, Number(off[1]));
  }
  if (end === 0) return { ok: false, why: 'it holds no tensors' };
  if (8 + raw.length + end !== size) return { ok: false, why: `its tensors need ${8 + raw.length + end} bytes but it has ${size}` };
  return { ok: true, bytes: size };
}

/** Merges `extra` into the file's `__metadata__` (existing engine keys win over nothing; ours override same names). */
export async function mergeSafetensorsMetadata(path: string, extra: Record<string, string>): Promise<void> {
  const { length, json } = await readRawHeader(path);
  const metadata = { ...((json.__metadata__ as Record<string, string> | undefined) ?? {}), ...extra };
  const next = { ...json, __metadata__: metadata };
  let text = JSON.stringify(next);
  // Keep the tensor data 8-byte aligned, as the format recommends.
  text += ' '.repeat((8 - (Buffer.byteLength(text) % 8)) % 8);
  const headerBytes = Buffer.from(text, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(headerBytes.length));
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    const out = createWriteStream(tmp);
    out.write(len);
    out.write(headerBytes);
    await pipeline(createReadStream(path, { start: 8 + length }), out);
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}
