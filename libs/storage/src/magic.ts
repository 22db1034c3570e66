/**
 * File type and image size from the first bytes of a file. Extensions and
 * Content-Type headers are never trusted; neither is a file that declares
 * more pixels than the trainers can decode.
 */

export type MediaKind = 'image' | 'video';

export interface SniffedType {
  mime: string;
  ext: string;
  kind: MediaKind;
}

/** Bytes needed to decide the type. */
export const SNIFF_BYTES = 64;

export function sniffType(head: Uint8Array): SniffedType | null {
  const b = Buffer.from(head.buffer, head.byteOffset, head.byteLength);
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return { mime: 'image/jpeg', ext: 'jpg', kind: 'image' };
  if (b.length >= 8 && b.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) {
    return { mime: 'image/png', ext: 'png', kind: 'image' };
  }
  if (b.length >= 12 && b.toString('latin1', 0, 4) === 'RIFF' && b.toString('latin1', 8, 12) === 'WEBP') {
    return { mime: 'image/webp', ext: 'webp', kind: 'image' };
  }
  if (b.length >= 12 && b.toString('latin1', 4, 8) === 'ftyp') {
    const brand = b.toString('latin1', 8, 12);
    // HEIF/AVIF still images share the ISO container; they are not accepted.
    if (['heic', 'heix', 'hevc', 'mif1', 'msf1', 'avif', 'avis'].includes(brand)) return null;
    return { mime: 'video/mp4', ext: 'mp4', kind: 'video' };
  }
  if (b.length >= 4 && b[0] === 0x1a && b[1] === 0x45 && b[2] === 0xdf && b[3] === 0xa3) {
    // EBML: WebM declares DocType "webm" in the header; plain Matroska is not accepted.
    if (b.subarray(0, SNIFF_BYTES).includes(Buffer.from('webm', 'latin1'))) return { mime: 'video/webm', ext: 'webm', kind: 'video' };
    return null;
  }
  return null;
}

/** A short human description of what a header looks like, for error messages. */
export function describeHead(head: Uint8Array): string {
  const b = Buffer.from(head.buffer, head.byteOffset, Math.min(head.byteLength, 8));
  if (b.length === 0) return 'an empty file';
  const ascii = b.toString('latin1').replace(/[^\x20-\x7e]/g, '.');
  if (/^\s*<(!doctype|html)/i.test(Buffer.from(head).toString('latin1', 0, 32))) return 'an HTML page';
  return `bytes ${b.toString('hex')} ("${ascii}")`;
}

export interface ImageDimensions {
  width: number;
  height: number;
}

/**
 * The outcome of reading an image header:
 * - `ok`: the declared size;
 * - `more`: the header continues past the bytes given (JPEG metadata comes
 *   before the frame header, so its size can sit kilobytes in);
 * - `invalid`: the header is malformed, with the reason.
 */
export type DimensionsRead = { status: 'ok'; dimensions: ImageDimensions } | { status: 'more' } | { status: 'invalid'; reason: string };

/** How far into a JPEG its frame header is looked for (EXIF and ICC segments come first). */
export const MAX_DIMENSION_HEADER_BYTES = 4 * 1024 * 1024;

/**
 * Reads the width and height a PNG (IHDR), JPEG (SOFn) or WebP (VP8, VP8L,
 * VP8X) header declares. No pixels are decoded. Other types: `invalid`.
 */
export function readImageDimensions(head: Uint8Array): DimensionsRead {
  const b = Buffer.from(head.buffer, head.byteOffset, head.byteLength);
  const type = sniffType(b);
  if (!type || type.kind !== 'image') return { status: 'invalid', reason: 'not a JPEG, PNG or WebP image' };
  if (type.ext === 'png') return readPng(b);
  if (type.ext === 'webp') return readWebp(b);
  return readJpeg(b);
}

const ok = (width: number, height: number): DimensionsRead => ({ status: 'ok', dimensions: { width, height } });

function readPng(b: Buffer): DimensionsRead {
  // Signature (8), then the first chunk must be IHDR: length (4) 'IHDR' (4) width (4) height (4).
  if (b.length < 24) return { status: 'more' };
  if (b.toString('latin1', 12, 16) !== 'IHDR') return { status: 'invalid', reason: 'the PNG does not start with an IHDR chunk' };
  return ok(b.readUInt32BE(16), b.readUInt32BE(20));
}

function readWebp(b: Buffer): DimensionsRead {
  if (b.length < 30) return { status: 'more' };
  const chunk = b.toString('latin1', 12, 16);
  if (chunk === 'VP8 ') {
    // Lossy: frame tag (3 bytes) at 20, start code 9d 01 2a at 23, then 14-bit width and height (2 scale bits each).
    if (b[23] !== 0x9d || b[24] !== 0x01 || b[25] !== 0x2a) return { status: 'invalid', reason: 'the WebP VP8 frame has no start code' };
    return ok(b.readUInt16LE(26) & 0x3fff, b.readUInt16LE(28) & 0x3fff);
  }
  if (chunk === 'VP8L') {
    // Lossless: signature 0x2f at 20, then width-1 and height-1 in 14 bits each, little-endian bit order.
    if (b[20] !== 0x2f) return { status: 'invalid', reason: 'the WebP VP8L stream has no signature' };
    const bits = b.readUInt32LE(21);
    return ok((bits & 0x3fff) + 1, ((bits >>> 14) & 0x3fff) + 1);
  }
  if (chunk === 'VP8X') {
    // Extended: flags (4 bytes) at 20, canvas width-1 and height-1 as 24-bit little-endian at 24 and 27.
    return ok(b.readUIntLE(24, 3) + 1, b.readUIntLE(27, 3) + 1);
  }
  return { status: 'invalid', reason: `the WebP has an unknown first chunk '${chunk.replace(/[^\x20-\x7e]/g, '.')}'` };
}

/** Start-of-frame markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC). */
function isSof(marker: number): boolean {
  return marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;
}

function readJpeg(b: Buffer): DimensionsRead {
  let i = 2;
  for (;;) {
    if (i + 4 > b.length) return { status: 'more' };
    if (b[i] !== 0xff) return { status: 'invalid', reason: `the JPEG has no segment marker at byte ${i}` };
    const marker = b[i + 1];
    // Fill bytes (FF FF ...) and standalone markers (TEM, RSTn) carry no length.
    if (marker === 0xff) {
      i += 1;
      continue;
    }
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
      i += 2;
      continue;
    }
    if (marker === 0xd9 || marker === 0xda) return { status: 'invalid', reason: 'the JPEG has no frame header before its image data' };
    const len = b.readUInt16BE(i + 2);
    if (len < 2) return { status: 'invalid', reason: `the JPEG has a segment of impossible length ${len} at byte ${i}` };
    if (isSof(marker)) {
      if (i + 9 > b.length) return { status: 'more' };
      const height = b.readUInt16BE(i + 5);
      const width = b.readUInt16BE(i + 7);
      // Height 0 means "defined later by a DNL marker": too rare to support, and unverifiable from the header.
      if (height === 0) return { status: 'invalid', reason: 'the JPEG declares its height only after the image data (DNL)' };
      return ok(width, height);
    }
    i += 2 + len;
  }
}
