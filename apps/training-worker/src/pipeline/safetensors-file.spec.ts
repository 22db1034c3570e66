import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mergeSafetensorsMetadata, readSafetensorsHeader } from './safetensors-file';

function safetensors(header: object, data: Buffer): Buffer {
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, data]);
}

describe('safetensors metadata merge', () => {
  let dir: string;
  beforeAll(async () => (dir = await mkdtemp(join(tmpdir(), 'st-'))));
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('adds our keys, keeps the engine keys and the tensor bytes', async () => {
    const data = Buffer.from(Float32Array.from([1, 2, 3, 4]).buffer);
    const path = join(dir, 'a.safetensors');
    await writeFile(path, safetensors({ 'lora_unet_x.lora_down.weight': { dtype: 'F32', shape: [2, 2], data_offsets: [0, 16] }, __metadata__: { ss_network_dim: '4' } }, data));
    await mergeSafetensorsMetadata(path, { stationthis_trigger_word: 'tok', ss_network_dim: '4' });
    const header = await readSafetensorsHeader(path);
    expect(header.metadata).toEqual({ ss_network_dim: '4', stationthis_trigger_word: 'tok' });
    expect(Object.keys(header.tensors)).toEqual(['lora_unet_x.lora_down.weight']);
    const bytes = await readFile(path);
    const n = Number(bytes.readBigUInt64LE(0));
    expect(n % 8).toBe(0);
    expect(bytes.subarray(8 + n).equals(data)).toBe(true);
  });

  it('rejects a file that is not safetensors', async () => {
    const path = join(dir, 'b.safetensors');
    await writeFile(path, 'not a safetensors file at all');
    await expect(readSafetensorsHeader(path)).rejects.toThrow(/header length/);
  });
});
