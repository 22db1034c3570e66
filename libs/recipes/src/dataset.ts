/**
 * What the engines see of a dataset: the caption of every item and the
 * image/video split. Pure rules, shared by every recipe; the worker's dataset
 * fetcher applies them when it writes the caption files.
 *
 * Why the trigger word goes into the captions: the engines learn the words
 * of the captions they train on. sd-scripts uses its `class_tokens` only for
 * images without a caption file, and musubi-tuner drops images without one
 * (and raises on such a video). A platform dataset mixes captioned and
 * uncaptioned items, and its captions rarely contain the trigger word, so a
 * LoRA trained on them verbatim does not answer to its advertised trigger.
 */
import type { DatasetSummary } from './contract';

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** True when `caption` contains `triggerWord` as a whole word (case-insensitive). */
export function captionHasTrigger(caption: string, triggerWord: string): boolean {
  const t = triggerWord.trim();
  if (!t) return true;
  return new RegExp(`(^|[^\\p{L}\\p{N}_])${escapeRegExp(t)}($|[^\\p{L}\\p{N}_])`, 'iu').test(caption);
}

/**
 * The caption the engine trains on for one item: the trigger word alone when
 * the item has no caption, the caption unchanged when it already names the
 * trigger word, otherwise `"<trigger>, <caption>"` (leading position, where
 * kohya's `keep_tokens` and caption shuffling would also keep it).
 * Whitespace (new lines included) is folded: the engines read one line.
 */
export function trainingCaption(caption: string | null | undefined, triggerWord: string): string {
  const text = (caption ?? '').replace(/\s+/g, ' ').trim();
  const trigger = triggerWord.trim();
  if (!text) return trigger;
  if (!trigger || captionHasTrigger(text, trigger)) return text;
  return `${trigger}, ${text}`;
}

/** File extensions the video recipes accept as clips (the platform stores mp4 and webm; mov from phones). */
export const VIDEO_EXTENSIONS = ['mp4', 'webm', 'mov', 'mkv'] as const;

/**
 * Whether a dataset item is a video: by its sniffed MIME type when known (after
 * the download), else by the URL's extension (before it, for the quote).
 */
export function isVideoItem(item: { mime?: string; url?: string }): boolean {
  if (item.mime) return item.mime.startsWith('video/');
  const path = (item.url ?? '').split(/[?#]/)[0].toLowerCase();
  const ext = path.slice(path.lastIndexOf('.') + 1);
  return (VIDEO_EXTENSIONS as readonly string[]).includes(ext);
}

/** Image and video counts of a dataset, as quote() and render() take them. */
export function summarizeDataset(items: { mime?: string; url?: string }[]): DatasetSummary {
  const videoCount = items.filter(isVideoItem).length;
  return { imageCount: items.length - videoCount, videoCount };
}
