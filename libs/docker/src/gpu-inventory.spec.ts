import { GpuConfigError, parseGpuDevicesEnv, parseNvidiaSmiCsv, readGpuInventory } from './gpu-inventory';

const SMI = [
  '0, GPU-11111111-2222-3333-4444-555555555555, NVIDIA GeForce RTX 4090, 24564',
  '1, GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee, NVIDIA H100 80GB HBM3, 81559',
  '',
].join('\n');

describe('GPU inventory', () => {
  it('parses nvidia-smi CSV; device ids are UUIDs', () => {
    expect(parseNvidiaSmiCsv(SMI)).toEqual([
      { index: 0, uuid: 'GPU-11111111-2222-3333-4444-555555555555', deviceId: 'GPU-11111111-2222-3333-4444-555555555555', name: 'NVIDIA GeForce RTX 4090', vramGb: 24 },
      { index: 1, uuid: 'GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee', deviceId: 'GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee', name: 'NVIDIA H100 80GB HBM3', vramGb: 79.6 },
    ]);
    expect(() => parseNvidiaSmiCsv('garbage')).toThrow(GpuConfigError);
  });

  it('parses GPU_DEVICES', () => {
    expect(parseGpuDevicesEnv('0:24, 1:48')).toEqual([
      { index: 0, deviceId: '0', name: 'configured GPU 0', vramGb: 24 },
      { index: 1, deviceId: '1', name: 'configured GPU 1', vramGb: 48 },
    ]);
    expect(parseGpuDevicesEnv('none')).toEqual([]);
    expect(parseGpuDevicesEnv(undefined)).toBeNull();
    expect(() => parseGpuDevicesEnv('0:24,0:24')).toThrow(/twice/);
    expect(() => parseGpuDevicesEnv('gpu0')).toThrow(/index:vramGb/);
  });

  it('prefers nvidia-smi, restricted to GPU_DEVICES indices when both are given', async () => {
    const smi = async () => SMI;
    expect(await readGpuInventory({}, smi)).toMatchObject({ source: 'nvidia-smi', cpuSlots: 0, gpus: [{ index: 0 }, { index: 1 }] });
    expect(await readGpuInventory({ GPU_DEVICES: '1:0', CPU_SLOTS: '2' }, smi)).toMatchObject({ source: 'nvidia-smi', cpuSlots: 2, gpus: [{ index: 1, vramGb: 79.6 }] });
    await expect(readGpuInventory({ GPU_DEVICES: '5:24' }, smi)).rejects.toThrow(/GPU 5/);
  });

  it('falls back to configuration without nvidia-smi; a GPU-less host gets one CPU slot by default', async () => {
    const noSmi = async () => null;
    expect(await readGpuInventory({ GPU_DEVICES: '0:24,1:24' }, noSmi)).toMatchObject({ source: 'config', cpuSlots: 0, gpus: [{ deviceId: '0' }, { deviceId: '1' }] });
    expect(await readGpuInventory({}, noSmi)).toEqual({ source: 'config', cpuSlots: 1, gpus: [] });
    expect(await readGpuInventory({ GPU_DEVICES: 'none', CPU_SLOTS: '3' }, async () => SMI)).toEqual({ source: 'config', cpuSlots: 3, gpus: [] });
    await expect(readGpuInventory({ CPU_SLOTS: '-1' }, noSmi)).rejects.toThrow(/CPU_SLOTS/);
  });

  it('reads this host (no nvidia-smi here) through the real runner', async () => {
    const inv = await readGpuInventory({ GPU_DEVICES: '0:24' });
    expect(inv.gpus.map((g) => g.index)).toEqual([0]);
  });
});
