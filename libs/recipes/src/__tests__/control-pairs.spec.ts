/** Concept datasets: pairing rules for control images, every error, sizes and file names. */
import { BLANK_CONTROL_PNG_BASE64, checkControlSizes, conceptPromptOutputIds, controlFileNameFor, platformSourceFilename, promptOfRequestPayload, resolveControlPairs } from '../index';

const IMG = (n: number, ext = 'jpg') => `https://cdn.example.com/u/a/${n}.${ext}`;
const CTL = (n: number) => `https://cdn.example.com/u/c/${n}.png`;
const images = [IMG(1), IMG(2, 'png'), IMG(3, 'webp')];

function controlSet(id: string, values: (string | null)[], extra: Record<string, unknown> = {}) {
  return { _id: id, type: 'control', status: 'completed', results: values.map((v) => (v === null ? null : { value: v })), ...extra };
}

describe('platformSourceFilename (the platform downloader naming)', () => {
  it('pads the 1-based index to three digits and keeps a known extension, else .jpg', () => {
    expect(platformSourceFilename(IMG(1), 0)).toBe('001.jpg');
    expect(platformSourceFilename('https://x.io/a/B.PNG?x=1', 9)).toBe('010.png');
    expect(platformSourceFilename('https://x.io/a/b.tiff', 99)).toBe('100.jpg');
    expect(platformSourceFilename('https://x.io/a/noext', 1)).toBe('002.jpg');
    expect(platformSourceFilename('not a url', 2)).toBe('003.jpg');
  });
});

const requestDoc = {
  images,
  embellishments: [
    { _id: 'cap', type: 'caption', status: 'completed', results: [{ value: 'x' }, { value: 'y' }, { value: 'z' }] },
    { ...controlSet('run', [CTL(9), CTL(9), CTL(9)]), status: 'in_progress' },
    { ...controlSet('failed', [CTL(9), CTL(9), CTL(9)]), status: 'failed' },
    { ...controlSet('nostatus', [CTL(9), CTL(9), CTL(9)]), status: undefined },
    controlSet('a', [CTL(1), CTL(2), CTL(3)]),
    controlSet('b', [CTL(4), CTL(5), CTL(6)]),
  ],
};

describe('resolveControlPairs', () => {
  it('pairs by position from the completed control embellishment, with its prompt', () => {
    const r = resolveControlPairs({ images, embellishments: [controlSet('c1', [CTL(1), CTL(2), CTL(3)], { config: { prompt: ' make it winter ' } })] });
    expect(r).toEqual({
      ok: true,
      pairing: {
        pairs: images.map((u, i) => ({ index: i, targetUrl: u, controlUrl: CTL(i + 1) })),
        source: 'embellishment:c1 (first completed)',
        prompt: 'make it winter',
        promptSource: 'control-set-config',
      },
    });
  });

  it('takes the requested control set, ignoring captions and unfinished sets', () => {
    const b = resolveControlPairs(requestDoc, 'b');
    expect(b.ok && b.pairing.source).toBe('embellishment:b (requested)');
    expect(b.ok && b.pairing.pairs[0]!.controlUrl).toBe(CTL(4));
    // No request: the platform's default, the first completed control set.
    const none = resolveControlPairs(requestDoc);
    expect(none.ok && none.pairing.source).toBe('embellishment:a (first completed)');
    expect(resolveControlPairs(requestDoc, '').ok).toBe(true);
  });

  it('refuses a requested set that is not a completed control set, naming it and its state, instead of training on another set', () => {
    const refused = (id: string, doc: Record<string, unknown> = requestDoc) => {
      const r = resolveControlPairs(doc, id);
      expect(r.ok).toBe(false);
      if (r.ok) throw new Error('accepted');
      expect(r.problems.map((p) => p.kind)).toEqual(['control-set-unavailable']);
      return r.problems[0]!.message;
    };
    expect(refused('run')).toBe(
      'The requested control set "run" is "in_progress", not completed, so there are no pairs to train on. This dataset\'s completed control sets: "a", "b". Wait until it has completed, or choose a completed control set (or none, to train on the first completed one) and submit again.',
    );
    expect(refused('failed')).toMatch(/^The requested control set "failed" is "failed", not completed/);
    expect(refused('nostatus')).toMatch(/^The requested control set "nostatus" is without a status, not completed/);
    expect(refused('cap')).toMatch(/^The requested control set "cap" is a "caption" set, not a control set.*completed control sets: "a", "b"\. Choose a completed control set/);
    expect(refused('gone')).toMatch(/^The requested control set "gone" is not a control set of this dataset/);
    // Legacy controlImages do not stand in for a set that was asked for by id.
    expect(refused('gone', { images, controlImages: [{ sourceFilename: '001.jpg', url: CTL(1) }] })).toMatch(/This dataset has no completed control set\. Choose/);
    // A hostile id is quoted and cut short.
    expect(refused(`x"${'y'.repeat(200)}`)).toMatch(/^The requested control set "x\\"y{62}" is not a control set/);
    // The refusal names no prompt outputs to read.
    expect(conceptPromptOutputIds(requestDoc, 'run')).toEqual([]);
  });

  it('trains on the prompt of the first linked generation output, else the set config (the platform order)', () => {
    const linked = {
      images,
      embellishments: [
        {
          ...controlSet('c', [], { config: { prompt: 'config prompt' } }),
          // A result swapped by hand links no generation; one output linked twice is read once.
          results: [{ value: CTL(1) }, { value: CTL(2), generationOutputId: 'g2' }, { value: CTL(3), generationOutputId: 'g2' }],
        },
      ],
    };
    expect(conceptPromptOutputIds(linked)).toEqual(['g2']);
    const fromGeneration = resolveControlPairs(linked, undefined, { generationPrompt: ' make it snow ' });
    expect(fromGeneration.ok && [fromGeneration.pairing.prompt, fromGeneration.pairing.promptSource]).toEqual(['make it snow', 'generation-output']);
    const fromConfig = resolveControlPairs(linked, undefined, { generationPrompt: '  ' });
    expect(fromConfig.ok && [fromConfig.pairing.prompt, fromConfig.pairing.promptSource]).toEqual(['config prompt', 'control-set-config']);
    const neither = resolveControlPairs({ images, embellishments: [controlSet('c', [CTL(1), CTL(2), CTL(3)])] });
    expect(neither.ok && 'prompt' in neither.pairing).toBe(false);
    // Legacy controlImages link no generation output.
    expect(conceptPromptOutputIds({ images, controlImages: [{ sourceFilename: '001.jpg', url: CTL(1) }] })).toEqual([]);
    expect(conceptPromptOutputIds({ images })).toEqual([]);
  });

  it('reads the prompt of a request payload as the platform does: input_prompt, then prompt, then text', () => {
    expect(promptOfRequestPayload({ input_prompt: ' a ', prompt: 'b', text: 'c' })).toBe('a');
    expect(promptOfRequestPayload({ input_prompt: '', prompt: 'b', text: 'c' })).toBe('b');
    expect(promptOfRequestPayload({ prompt: 7, text: 'c' })).toBe('c');
    for (const none of [undefined, null, 'x', {}, { input_prompt: '   ' }]) expect(promptOfRequestPayload(none)).toBeUndefined();
  });

  it('pairs the legacy controlImages by sourceFilename, in any order', () => {
    const r = resolveControlPairs({
      images,
      controlImages: [
        { sourceFilename: '003.webp', url: CTL(3) },
        { sourceFilename: '001.jpg', url: CTL(1) },
        { sourceFilename: '002.png', url: CTL(2) },
      ],
    });
    expect(r.ok && r.pairing.pairs.map((p) => p.controlUrl)).toEqual([CTL(1), CTL(2), CTL(3)]);
    expect(r.ok && r.pairing.source).toBe('controlImages (legacy, by sourceFilename)');
  });

  it('prefers the embellishment over the legacy list, as the platform does', () => {
    const r = resolveControlPairs({ images, controlImages: [{ sourceFilename: '001.jpg', url: CTL(7) }], embellishments: [controlSet('c', [CTL(1), CTL(2), CTL(3)])] });
    expect(r.ok && r.pairing.pairs[0]!.controlUrl).toBe(CTL(1));
  });

  it('refuses a dataset with no control images at all', () => {
    const r = resolveControlPairs({ images });
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.problems.map((p) => p.kind)).toEqual(['no-control-set']);
      expect(r.problems[0]!.message).toMatch(/needs a control image for every dataset image.*choose the style\/subject mode/);
    }
  });

  it('names the images whose control is missing (embellishment and legacy)', () => {
    const e = resolveControlPairs({ images, embellishments: [controlSet('c', [CTL(1), null, ' '])] });
    expect(e.ok).toBe(false);
    if (!e.ok) {
      expect(e.problems.map((p) => p.kind)).toEqual(['missing-control']);
      expect(e.problems[0]!.message).toBe(
        '2 of 3 images have no control image in control set embellishment:c (first completed): image 2 (002.png), image 3 (003.webp). Complete the control set (or remove those images) and submit again.',
      );
    }
    const l = resolveControlPairs({ images, controlImages: [{ sourceFilename: '002.png', url: CTL(2) }] });
    expect(!l.ok && l.problems[0]!.message).toMatch(/^2 of 3 images have no control image \(controlImages matched by sourceFilename\): image 1 \(001\.jpg\), image 3 \(003\.webp\)\./);
  });

  it('lists at most eight names, then a count', () => {
    const many = Array.from({ length: 12 }, (_, i) => IMG(i + 1));
    const r = resolveControlPairs({ images: many, embellishments: [controlSet('c', [CTL(1)])] });
    expect(!r.ok && r.problems[0]!.message).toMatch(/image 9 \(009\.jpg\) and 3 more\./);
  });

  it('refuses controls that belong to no image (a control set made for another dataset version)', () => {
    const e = resolveControlPairs({ images, embellishments: [controlSet('c', [CTL(1), CTL(2), CTL(3), CTL(4)])] });
    expect(!e.ok && e.problems.map((p) => p.kind)).toEqual(['unmatched-control']);
    expect(!e.ok && e.problems[0]!.message).toMatch(/has 4 results for 3 images: 1 control image belong to no image/);
    const l = resolveControlPairs({
      images,
      controlImages: [
        { sourceFilename: '001.jpg', url: CTL(1) },
        { sourceFilename: '002.png', url: CTL(2) },
        { sourceFilename: '003.webp', url: CTL(3) },
        { sourceFilename: '004.jpg', url: CTL(4) },
        { url: CTL(5) },
      ],
    });
    expect(!l.ok && l.problems.map((p) => p.kind)).toEqual(['unmatched-control']);
    expect(!l.ok && l.problems[0]!.message).toMatch(/2 control images name no image of the dataset by sourceFilename: "004\.jpg", \(no sourceFilename\)/);
  });

  it('refuses two controls for one image, and a control without a URL', () => {
    const r = resolveControlPairs({
      images,
      controlImages: [
        { sourceFilename: '001.jpg', url: CTL(1) },
        { sourceFilename: '001.jpg', url: CTL(9) },
        { sourceFilename: '002.png', url: '' },
        { sourceFilename: '003.webp', url: CTL(3) },
      ],
    });
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.problems.map((p) => p.kind).sort()).toEqual(['duplicate-control', 'invalid-control-url', 'missing-control']);
      expect(r.problems.find((p) => p.kind === 'duplicate-control')!.message).toMatch(/image 1 \(001\.jpg\) has 2/);
    }
  });

  it('survives hostile documents without throwing', () => {
    for (const doc of [{}, { images: 'x' }, { images, embellishments: 'x' }, { images, embellishments: [null, 1, { type: 'control', status: 'completed', results: 'x' }] }, { images, controlImages: [null, 7, 'x'] }]) {
      const r = resolveControlPairs(doc as never);
      expect(typeof r.ok).toBe('boolean');
    }
  });
});

describe('checkControlSizes', () => {
  it('passes equal shapes (sizes may differ), fails other aspect ratios naming both sizes', () => {
    expect(checkControlSizes([{ index: 0, target: { width: 1024, height: 768 }, control: { width: 512, height: 384 } }])).toEqual([]);
    expect(checkControlSizes([{ index: 0, target: { width: 1000, height: 1000 }, control: { width: 1010, height: 1000 } }])).toEqual([]);
    expect(checkControlSizes([{ index: 1, target: { width: 1024, height: 768 }, control: { width: 768, height: 1024 } }])).toEqual(['image 2 is 1024×768 but its control is 768×1024']);
    // Unknown sizes are not judged.
    expect(checkControlSizes([{ index: 0, target: { width: 1, height: 1 } }])).toEqual([]);
    const many = Array.from({ length: 10 }, (_, i) => ({ index: i, target: { width: 100, height: 200 }, control: { width: 200, height: 100 } }));
    expect(checkControlSizes(many)).toHaveLength(9);
    expect(checkControlSizes(many)[8]).toBe('and 2 more pairs');
  });
  it('names every mismatched pair when asked to (the check before the charge)', () => {
    const many = Array.from({ length: 10 }, (_, i) => ({ index: i, target: { width: 100, height: 200 }, control: { width: 200, height: 100 } }));
    const all = checkControlSizes(many, Number.POSITIVE_INFINITY);
    expect(all).toHaveLength(10);
    expect(all[9]).toBe('image 10 is 100×200 but its control is 200×100');
  });
});

describe('control file names and the blank control', () => {
  it('names a control after its target stem, with its own extension', () => {
    expect(controlFileNameFor('img_0001.jpg', 'png')).toBe('img_0001.png');
    expect(controlFileNameFor('img_0010.webp', '.JPG')).toBe('img_0010.jpg');
    expect(() => controlFileNameFor('../x.jpg', 'png')).toThrow(/not a plain name/);
  });
  it('the blank control is a 64×64 RGB PNG', () => {
    const png = Buffer.from(BLANK_CONTROL_PNG_BASE64, 'base64');
    expect(png.subarray(0, 8).toString('hex')).toBe('89504e470d0a1a0a');
    expect(png.readUInt32BE(16)).toBe(64);
    expect(png.readUInt32BE(20)).toBe(64);
    expect(png[25]).toBe(2); // colour type RGB
  });
});
