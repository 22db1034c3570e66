/**
 * Maps a recipe version to the image reference the worker runs. The image
 * manifest written by `nx run recipe-builder:build-images` wins (it carries
 * the pushed digest); without it the conventional tag is used.
 */
import { readFile } from 'node:fs/promises';
import { inject, injectable } from 'tsyringe';
import type { Recipe } from '@stationthis/recipes';
import { WORKER_CONFIG } from '../tokens';
import type { WorkerConfig } from '../config/worker-config';

export interface ImageManifestEntry {
  image: string;
  tag?: string;
  digest?: string;
  repoDigest?: string;
}

@injectable()
export class ImageResolver {
  private manifest: Record<string, ImageManifestEntry> | null = null;

  constructor(@inject(WORKER_CONFIG) private readonly config: WorkerConfig) {}

  async resolve(recipe: Recipe): Promise<string> {
    const manifest = await this.load();
    const entry = manifest[`${recipe.id}@${recipe.version}`];
    if (entry) return entry.repoDigest ?? (entry.tag ? `${entry.image}:${entry.tag}` : entry.image);
    return `${this.config.imageRegistry}/${this.config.imageNamespace}/${recipe.image.name}:${recipe.version}`;
  }

  private async load(): Promise<Record<string, ImageManifestEntry>> {
    if (this.manifest) return this.manifest;
    try {
      const raw = JSON.parse(await readFile(this.config.imageManifestPath, 'utf8')) as { images?: Record<string, ImageManifestEntry> } & Record<string, unknown>;
      this.manifest = (raw.images ?? raw) as Record<string, ImageManifestEntry>;
    } catch {
      this.manifest = {};
    }
    return this.manifest;
  }
}
