/**
 * Reading and writing the image manifest file. Its shape and parser are
 * libs/recipes' (image-manifest.ts), shared with the worker.
 */
import { readFile, writeFile, mkdir, rename } from 'node:fs/promises';
import { dirname } from 'node:path';
import {
  IMAGE_MANIFEST_SCHEMA_VERSION,
  imageManifestKey,
  parseImageManifestText,
  serializeImageManifest,
  type ImageManifest,
  type ImageManifestEntry,
} from '@stationthis/recipes';

/** Reads and checks a manifest file. */
export async function readImageManifest(path: string): Promise<ImageManifest> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new Error(`Cannot read the image manifest ${path}: ${(err as Error).message}`, { cause: err });
  }
  return parseImageManifestText(text, path);
}

/**
 * Adds or replaces entries in the manifest at `path` (created when missing),
 * keeping entries of recipes not built this time. Written via rename, so a
 * reader never sees half a file.
 */
export async function upsertImageManifest(path: string, entries: ImageManifestEntry[]): Promise<ImageManifest> {
  let manifest: ImageManifest = { schemaVersion: IMAGE_MANIFEST_SCHEMA_VERSION, images: {} };
  try {
    manifest = await readImageManifest(path);
  } catch (err) {
    if (!/ENOENT/.test((err as Error).message)) throw err;
  }
  for (const e of entries) manifest.images[imageManifestKey(e.recipeId, e.recipeVersion)] = e;
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, serializeImageManifest(manifest));
  await rename(tmp, path);
  return manifest;
}
