/** File type detection by magic bytes. Extensions and Content-Type headers are never trusted. */

export type MediaKind = 'image' | 'video';

export interface SniffedType {
  mime: string;
  ext: string;
  kind: MediaKind;
}

/** Bytes needed to decide. */
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
