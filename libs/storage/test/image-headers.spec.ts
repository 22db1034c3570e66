/** Image sizes from crafted headers: PNG IHDR, JPEG SOFn (after metadata), WebP VP8/VP8L/VP8X; and the limits applied to them. */
import { DEFAULT_FETCH_LIMITS, StorageError, readImageDimensions } from '../src';
import { identifyMedia as identifyMediaForTest } from '../src/dataset-policy';
import { jpegOf, pngOf, webpOf } from '../src/testing';

describe('readImageDimensions', () => {
  it('reads the size each format declares', () => {
    expect(readImageDimensions(pngOf(20000, 20000))).toEqual({ status: 'ok', dimensions: { width: 20000, height: 20000 } });
    expect(readImageDimensions(jpegOf(640, 480))).toEqual({ status: 'ok', dimensions: { width: 640, height: 480 } });
    expect(readImageDimensions(jpegOf(3000, 2000, { metadataBytes: 150_000 }))).toEqual({ status: 'ok', dimensions: { width: 3000, height: 2000 } });
    expect(readImageDimensions(webpOf(1024, 768, 'VP8'))).toEqual({ status: 'ok', dimensions: { width: 1024, height: 768 } });
    expect(readImageDimensions(webpOf(16383, 5, 'VP8L'))).toEqual({ status: 'ok', dimensions: { width: 16383, height: 5 } });
    expect(readImageDimensions(webpOf(30000, 20000, 'VP8X'))).toEqual({ status: 'ok', dimensions: { width: 30000, height: 20000 } });
  });

  it('asks for more bytes while the header is incomplete', () => {
    expect(readImageDimensions(pngOf(64, 64).subarray(0, 20))).toEqual({ status: 'more' });
    const jpeg = jpegOf(64, 64, { metadataBytes: 100_000 });
    expect(readImageDimensions(jpeg.subarray(0, 50_000))).toEqual({ status: 'more' });
    expect(readImageDimensions(webpOf(64, 64).subarray(0, 25))).toEqual({ status: 'more' });
  });

  it('calls malformed headers invalid, with the reason', () => {
    const png = pngOf(64, 64);
    png.write('IDAT', 12, 'latin1');
    expect(readImageDimensions(png)).toEqual({ status: 'invalid', reason: expect.stringMatching(/IHDR/) });
    const vp8 = webpOf(64, 64, 'VP8');
    vp8[23] = 0;
    expect(readImageDimensions(vp8)).toMatchObject({ status: 'invalid', reason: expect.stringMatching(/start code/) });
    const noSof = Buffer.from([0xff, 0xd8, 0xff, 0xda, 0, 2, 1, 2, 3, 4]);
    expect(readImageDimensions(noSof)).toMatchObject({ status: 'invalid', reason: expect.stringMatching(/no frame header/) });
    const dnl = jpegOf(64, 0);
    expect(readImageDimensions(dnl)).toMatchObject({ status: 'invalid', reason: expect.stringMatching(/DNL/) });
    expect(readImageDimensions(Buffer.from('<!doctype html>'.padEnd(64)))).toMatchObject({ status: 'invalid' });
  });
});

describe('identifyMedia: the limits on declared size', () => {
  const limits = DEFAULT_FETCH_LIMITS;
  const check = (b: Buffer, i = 1) => identifyMediaForTest(b, true, i, `https://cdn.example/img-${i + 1}.png`, { limits });

  it('accepts ordinary photos and the documented edges', () => {
    expect(check(jpegOf(4032, 3024))?.dimensions).toEqual({ width: 4032, height: 3024 });
    expect(check(pngOf(16, 16))?.dimensions).toEqual({ width: 16, height: 16 });
    expect(check(webpOf(16384, 5000, 'VP8X'))?.dimensions).toEqual({ width: 16384, height: 5000 });
    expect(check(pngOf(9459, 9459))?.dimensions).toEqual({ width: 9459, height: 9459 }); // 89.47 MP, just under Pillow's limit
  });

  it('rejects the 49 KB PNG declaring 20000×20000, naming the image and the size', () => {
    const bomb = pngOf(20000, 20000, 49_000);
    const err = (() => {
      try {
        check(bomb, 1);
      } catch (e) {
        return e as StorageError;
      }
    })();
    expect(err).toBeInstanceOf(StorageError);
    expect(err?.kind).toBe('invalid-content');
    expect(err?.message).toMatch(/^Image 2 \(https:\/\/cdn\.example\/img-2\.png\) declares 20000×20000 pixels; each side may be at most 16384/);
  });

  it('rejects too many pixels, too-long sides and too-small images', () => {
    expect(() => check(pngOf(9460, 9460))).toThrow(/9460×9460 pixels \(89\.5 MP\); the limit is 89\.5 MP/);
    expect(() => check(webpOf(16385, 100, 'VP8X'))).toThrow(/at most 16384/);
    expect(() => check(jpegOf(15, 400))).toThrow(/is 15×400 pixels; each side must be at least 16/);
    expect(() => identifyMediaForTest(pngOf(100, 100), true, 0, 'u', { limits: { ...limits, minSidePx: 256 } })).toThrow(/at least 256/);
  });

  it('waits for more bytes of a stream, and fails a file that ends inside its header', () => {
    const jpeg = jpegOf(800, 600, { metadataBytes: 70_000 });
    expect(identifyMediaForTest(jpeg.subarray(0, 1000), false, 0, 'u', { limits })).toBeNull();
    expect(() => identifyMediaForTest(jpeg.subarray(0, 1000), true, 0, 'u', { limits })).toThrow(/damaged image\/jpeg image: the file ends before its header does/);
  });

  it('leaves video clips to the video rules', () => {
    const mp4 = Buffer.concat([Buffer.from([0, 0, 0, 0x18]), Buffer.from('ftypisom'), Buffer.alloc(64)]);
    expect(() => check(mp4)).toThrow(/accepts only images/);
    expect(identifyMediaForTest(mp4, true, 0, 'u', { limits, allowVideo: true })?.type.mime).toBe('video/mp4');
  });
});
