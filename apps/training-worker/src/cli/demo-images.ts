/**
 * Procedural demo dataset: small PNGs of coloured shapes with captions, so the
 * README demo needs no downloads. Pure Node (zlib), no image library.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32, deflateSync } from 'node:zlib';

function chunk(type: string, data: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body) >>> 0);
  return Buffer.concat([len, body, crc]);
}

/** Encodes an RGB8 image as PNG. */
export function encodePng(width: number, height: number, rgb: Uint8Array): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // colour type RGB
  const raw = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    raw[y * (width * 3 + 1)] = 0; // filter: none
    Buffer.from(rgb.buffer, rgb.byteOffset + y * width * 3, width * 3).copy(raw, y * (width * 3 + 1) + 1);
  }
  const sig = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return Buffer.concat([sig, chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}

const COLOURS: [string, [number, number, number]][] = [
  ['red', [220, 40, 40]], ['green', [40, 180, 60]], ['blue', [40, 80, 220]], ['yellow', [230, 210, 40]],
  ['purple', [150, 60, 200]], ['orange', [240, 140, 30]], ['teal', [30, 170, 170]], ['pink', [240, 120, 180]],
];

export async function writeDemoImages(dir: string, count: number, size = 64): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const files: string[] = [];
  for (let i = 0; i < count; i++) {
    const [colourName, colour] = COLOURS[i % COLOURS.length];
    const shape = i % 2 === 0 ? 'circle' : 'square';
    const rgb = new Uint8Array(size * size * 3);
    const cx = size / 2 + ((i * 7) % 11) - 5;
    const cy = size / 2 + ((i * 5) % 9) - 4;
    const r = size / 4 + (i % 3) * 2;
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        const inside = shape === 'circle' ? (x - cx) ** 2 + (y - cy) ** 2 < r * r : Math.abs(x - cx) < r && Math.abs(y - cy) < r;
        const o = (y * size + x) * 3;
        const bg = 235 - ((x + y) % 16);
        rgb[o] = inside ? colour[0] : bg;
        rgb[o + 1] = inside ? colour[1] : bg;
        rgb[o + 2] = inside ? colour[2] : bg;
      }
    }
    const name = `shape_${String(i + 1).padStart(3, '0')}`;
    await writeFile(join(dir, `${name}.png`), encodePng(size, size, rgb));
    await writeFile(join(dir, `${name}.txt`), `a ${colourName} ${shape} on a light background`);
    files.push(`${name}.png`);
  }
  return files;
}
