/**
 * Maps a recipe version to the image reference the worker runs. The image
 * manifest written by `nx run recipe-builder:build-images` wins (it carries
 * the pushed digest); with no manifest file at all the conventional tag is
 * used. A manifest that exists but does not parse is an error, never a silent
 * fall back to a tag: the digest pin is the point of the manifest.
 */
import { readFile } from 'node:fs/promises';
import { inject, injectable } from 'tsyringe';
import { findManifestEntry, parseImageManifestText, type ImageManifest, type Recipe } from '@stationthis/recipes';
import { WORKER_CONFIG } from '../tokens';
import type { WorkerConfig } from '../config/worker-config';

@injectable()
export class ImageResolver {
  private manifest: ImageManifest | null = null;

  constructor(@inject(WORKER_CONFIG) private readonly config: WorkerConfig) {}

  async resolve(recipe: Recipe): Promise<string> {
    const manifest = await this.load();
    const entry = findManifestEntry(manifest, recipe.id, recipe.version);
    if (entry) return entry.repoDigest ?? `${entry.image}:${entry.tag}`;
    return `${this.config.imageRegistry}/${this.config.imageNamespace}/${recipe.image.name}:${recipe.version}`;
  }

  private async load(): Promise<ImageManifest> {
    if (this.manifest) return this.manifest;
    let text: string;
    try {
      text = await readFile(this.config.imageManifestPath, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`Cannot read the image manifest ${this.config.imageManifestPath}: ${(err as Error).message}`, { cause: err });
      return (this.manifest = { schemaVersion: 1, images: {} });
    }
    // Throws naming the problem and how to regenerate the file; not cached, so a fixed file is picked up.
    this.manifest = parseImageManifestText(text, this.config.imageManifestPath);
    return this.manifest;
  }
}
