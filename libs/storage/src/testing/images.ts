/**
 * Crafted image headers for tests: real magic bytes and a real size header
 * (PNG IHDR with its CRC, JPEG SOF0 after an APP segment, WebP VP8/VP8L/VP8X),
 * followed by filler instead of pixel data. Enough for every check the
 * fetcher makes; not decodable by a trainer.
 */
import { randomBytes } from 'node:crypto';

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(b: Buffer): number {
  let c = 0xffffffff;
  for (const x of b) c = CRC_TABLE[(c ^ x) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function filler(n: number): Buffer {
  return randomBytes(n);
}

/** A PNG declaring `width`×`height` (8-bit RGB), `extra` filler bytes after the IHDR chunk. */
export function pngOf(width: number, height: number, extra = 200): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  const typeAndData = Buffer.concat([Buffer.from('IHDR'), ihdr]);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(13);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(typeAndData));
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), len, typeAndData, crc, filler(extra)]);
}

/** A baseline JPEG declaring `width`×`height`; `metadataBytes` of APP1 padding come before the frame header, as EXIF does. */
export function jpegOf(width: number, height: number, opts: { metadataBytes?: number; extra?: number } = {}): Buffer {
  const segment = (marker: number, body: Buffer) => {
    const h = Buffer.from([0xff, marker, 0, 0]);
    h.writeUInt16BE(body.length + 2, 2);
    return Buffer.concat([h, body]);
  };
  const app0 = segment(0xe0, Buffer.from([0x4a, 0x46, 0x49, 0x46, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0]));
  const app1: Buffer[] = [];
  for (let left = opts.metadataBytes ?? 0; left > 0; left -= 65_000) app1.push(segment(0xe1, filler(Math.min(left, 65_000))));
  const sof = Buffer.alloc(15);
  sof[0] = 8;
  sof.writeUInt16BE(height, 1);
  sof.writeUInt16BE(width, 3);
  sof[5] = 3;
  sof.set([1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1], 6);
  return Buffer.concat([Buffer.from([0xff, 0xd8]), app0, ...app1, segment(0xc0, sof), filler(opts.extra ?? 200)]);
}

function riff(chunk: string, data: Buffer, extra: number): Buffer {
  const body = Buffer.concat([Buffer.from(chunk, 'latin1'), Buffer.alloc(4), data, filler(extra)]);
  body.writeUInt32LE(data.length + extra, 4);
  const head = Buffer.concat([Buffer.from('RIFF'), Buffer.alloc(4), Buffer.from('WEBP')]);
  head.writeUInt32LE(4 + body.length, 4);
  return Buffer.concat([head, body]);
}

/** A WebP declaring `width`×`height` in the given flavour (lossy VP8, lossless VP8L, extended VP8X). */
export function webpOf(width: number, height: number, flavour: 'VP8' | 'VP8L' | 'VP8X' = 'VP8', extra = 200): Buffer {
  if (flavour === 'VP8') {
    const d = Buffer.alloc(10);
    d.set([0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a], 0); // key frame tag, start code
    d.writeUInt16LE(width & 0x3fff, 6);
    d.writeUInt16LE(height & 0x3fff, 8);
    return riff('VP8 ', d, extra);
  }
  if (flavour === 'VP8L') {
    const d = Buffer.alloc(5);
    d[0] = 0x2f;
    d.writeUInt32LE(((width - 1) & 0x3fff) | (((height - 1) & 0x3fff) << 14), 1);
    return riff('VP8L', d, extra);
  }
  const d = Buffer.alloc(10);
  d.writeUIntLE(width - 1, 4, 3);
  d.writeUIntLE(height - 1, 7, 3);
  return riff('VP8X', d, extra);
}
