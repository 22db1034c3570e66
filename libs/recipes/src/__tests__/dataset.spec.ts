import { captionHasTrigger, isVideoItem, summarizeDataset, trainingCaption } from '../dataset';
import { toToml, tomlFloat } from '../util/toml';
import { getRecipe } from '../registry';

describe('trainingCaption: the trigger word reaches every caption the engine trains on', () => {
  it('uses the trigger word alone for an uncaptioned item', () => {
    expect(trainingCaption('', 'sks_dog')).toBe('sks_dog');
    expect(trainingCaption(undefined, 'sks_dog')).toBe('sks_dog');
    expect(trainingCaption('   \n', 'sks_dog')).toBe('sks_dog');
  });
  it('keeps a caption that already names the trigger word, in any case and position', () => {
    expect(trainingCaption('a photo of sks_dog on grass', 'sks_dog')).toBe('a photo of sks_dog on grass');
    expect(trainingCaption('SKS_DOG, studio light', 'sks_dog')).toBe('SKS_DOG, studio light');
  });
  it('prefixes the trigger word when the caption lacks it, also when it only appears inside another word', () => {
    expect(trainingCaption('a dog on grass', 'sks_dog')).toBe('sks_dog, a dog on grass');
    expect(trainingCaption('sks_doggy style', 'sks_dog')).toBe('sks_dog, sks_doggy style');
    expect(captionHasTrigger('xsks_dog', 'sks_dog')).toBe(false);
  });
  it('folds new lines: the engines read the first line of a caption file', () => {
    expect(trainingCaption('line one\nline two', 'tok')).toBe('tok, line one line two');
  });
  it('treats trigger words with regex characters literally', () => {
    expect(captionHasTrigger('a c++ logo', 'c++')).toBe(true);
    expect(captionHasTrigger('a c logo', 'c++')).toBe(false);
  });
});

describe('summarizeDataset', () => {
  it('counts videos by sniffed MIME type, else by URL extension', () => {
    expect(isVideoItem({ mime: 'video/mp4', url: 'x.png' })).toBe(true);
    expect(isVideoItem({ mime: 'image/png', url: 'x.mp4' })).toBe(false);
    expect(isVideoItem({ url: 'https://r2/x/clip.MP4?sig=1' })).toBe(true);
    expect(summarizeDataset([{ url: 'a.png' }, { url: 'b.webm' }, { mime: 'video/quicktime' }])).toEqual({ imageCount: 1, videoCount: 2 });
  });
});

describe('TOML floats', () => {
  it('writes a float the engine schema requires as a float', () => {
    expect(toToml({ a: tomlFloat(30), b: tomlFloat(29.97), c: 30 })).toContain('a = 30.0\nb = 29.97\nc = 30');
  });
});

describe('WAN dataset rendering', () => {
  const wan = getRecipe('wan-lora');
  const render = (dataset: { imageCount: number; videoCount: number }, over: Record<string, unknown> = {}) => {
    const v = wan.validate({ task: 't2v-1.3B', ...over });
    if (!v.ok) throw new Error(JSON.stringify(v.issues));
    return wan.render({ jobId: 'j1', parameters: v.value, triggerWord: 'tok', outputName: 'out', dataset, baseModelFiles: {} }).files[0].content;
  };
  it('emits the video dataset with the source frame rate and clips spread over each video', () => {
    const toml = render({ imageCount: 2, videoCount: 2 });
    expect(toml).toContain('image_directory');
    expect(toml).toContain('video_directory');
    expect(toml).toContain('source_fps = 30.0');
    expect(toml).toContain('frame_extraction = "uniform"');
    expect(toml).toContain('frame_sample = 3');
  });
  it('emits only the video dataset for a video-only dataset', () => {
    const toml = render({ imageCount: 0, videoCount: 3 }, { videoFps: 24, clipsPerVideo: 1 });
    expect(toml).not.toContain('image_directory');
    expect(toml).toContain('source_fps = 24.0');
    expect(toml).toContain('frame_extraction = "head"');
  });
});
