/**
 * The image manifest: which pushed image belongs to which recipe version.
 * recipe-builder writes it; the training worker reads it and runs images by
 * repoDigest, so a re-pushed tag can never change what a recipe version runs.
 * One parser for both (pure: the callers read and write the file).
 */
export const IMAGE_MANIFEST_SCHEMA_VERSION = 1;

export interface ImageManifestEntry {
  recipeId: string;
  recipeVersion: string;
  /** Repository without tag, e.g. '127.0.0.1:5000/stationthis/sdxl-kohya'. */
  image: string;
  /** The recipe-version tag, e.g. '1.0.0'. */
  tag: string;
  /** The source-revision tag, e.g. 'a1b2c3d'. */
  gitTag: string;
  /** Registry manifest digest 'sha256:…'; null when the image was built without --push. */
  digest: string | null;
  /** `${image}@${digest}`: what the worker should run; null when not pushed. */
  repoDigest: string | null;
  /** Local image id (config digest), for hosts that use the local image. */
  imageId: string;
  engineCommit: string;
}

export interface ImageManifest {
  schemaVersion: typeof IMAGE_MANIFEST_SCHEMA_VERSION;
  /** Keyed by `${recipeId}@${recipeVersion}`. */
  images: Record<string, ImageManifestEntry>;
}

export function imageManifestKey(recipeId: string, recipeVersion: string): string {
  return `${recipeId}@${recipeVersion}`;
}

const DIGEST = /^sha256:[0-9a-f]{64}$/;

function fail(path: string, why: string): never {
  throw new Error(`Image manifest ${path} is invalid: ${why}. Regenerate it with \`npx nx run recipe-builder:build-images -- --push\``);
}

/** Checks the parsed JSON shape; throws naming the first problem. */
export function parseImageManifest(json: unknown, path = '<memory>'): ImageManifest {
  if (!json || typeof json !== 'object') fail(path, 'not a JSON object');
  const m = json as Partial<ImageManifest>;
  if (m.schemaVersion !== IMAGE_MANIFEST_SCHEMA_VERSION) fail(path, `schemaVersion is ${String(m.schemaVersion)}, expected ${IMAGE_MANIFEST_SCHEMA_VERSION}`);
  if (!m.images || typeof m.images !== 'object') fail(path, "missing 'images'");
  for (const [key, e] of Object.entries(m.images)) {
    const s = (v: unknown) => typeof v === 'string' && v.length > 0;
    if (!e || !s(e.recipeId) || !s(e.recipeVersion) || !s(e.image) || !s(e.tag) || !s(e.imageId)) fail(path, `entry '${key}' lacks recipeId, recipeVersion, image, tag or imageId`);
    if (key !== imageManifestKey(e.recipeId, e.recipeVersion)) fail(path, `entry '${key}' is filed under the wrong key`);
    if (e.digest !== null && !(typeof e.digest === 'string' && DIGEST.test(e.digest))) fail(path, `entry '${key}' has a malformed digest`);
    if (e.digest !== null && e.repoDigest !== `${e.image}@${e.digest}`) fail(path, `entry '${key}' has a repoDigest that does not match image@digest`);
  }
  return m as ImageManifest;
}

/** Parses manifest text (JSON) and checks it; throws naming the first problem. */
export function parseImageManifestText(text: string, path = '<memory>'): ImageManifest {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    fail(path, 'not valid JSON');
  }
  return parseImageManifest(json, path);
}

/** The entry for one recipe version, or undefined. */
export function findManifestEntry(manifest: ImageManifest, recipeId: string, recipeVersion: string): ImageManifestEntry | undefined {
  return manifest.images[imageManifestKey(recipeId, recipeVersion)];
}

/** Stable serialisation: keys sorted, so unchanged entries give unchanged bytes. */
export function serializeImageManifest(manifest: ImageManifest): string {
  const images: Record<string, ImageManifestEntry> = {};
  for (const key of Object.keys(manifest.images).sort()) {
    const e = manifest.images[key];
    images[key] = Object.fromEntries(Object.keys(e).sort().map((k) => [k, e[k as keyof ImageManifestEntry]])) as unknown as ImageManifestEntry;
  }
  return `${JSON.stringify({ schemaVersion: manifest.schemaVersion, images }, null, 2)}\n`;
}

