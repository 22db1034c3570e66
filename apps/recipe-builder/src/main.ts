/**
 * recipe-builder CLI: `generate` renders the Dockerfiles and build contexts,
 * `build-images` builds, tags, pushes and records the image manifest.
 * Run through Nx: `npx nx run recipe-builder:build-images -- --push`.
 */
import { join, resolve } from 'node:path';
import Docker from 'dockerode';
import { buildImages, resolveGitSha } from './build-images';
import { parseCliArgs, USAGE } from './cli-args';
import { generateBuildContexts } from './generate';
import { loadRecipes } from './recipes-source';

/** apps/recipe-builder/build, wherever the command is started from (this file runs from dist/). */
export const DEFAULT_OUT_DIR = resolve(__dirname, '..', 'build');

async function main(argv: string[]): Promise<number> {
  const cmd = parseCliArgs(argv, { outDir: DEFAULT_OUT_DIR, registry: process.env.REGISTRY_URL ?? '127.0.0.1:5000' });
  const log = (line: string) => process.stdout.write(`${line}\n`);
  if (cmd.command === 'help') {
    log(USAGE);
    return 0;
  }
  const recipes = loadRecipes();
  if (cmd.command === 'generate') {
    const out = await generateBuildContexts(recipes, resolve(cmd.outDir), cmd.only);
    for (const g of out) log(`${g.recipe.id}@${g.recipe.version}: ${g.context.files.length} files in ${g.dir}`);
    return 0;
  }
  const outDir = resolve(cmd.outDir);
  const result = await buildImages({
    recipes,
    outDir,
    only: cmd.only,
    registry: cmd.registry,
    namespace: cmd.namespace,
    push: cmd.push,
    dryRun: cmd.dryRun,
    baseImages: cmd.baseImages,
    inputs: { engineArchiveDir: cmd.engineArchiveDir, tokenizersDir: cmd.tokenizersDir, caBundle: cmd.caBundle },
    debianCompat: cmd.debianCompat,
    buildArgs: cmd.buildArgs,
    nocache: cmd.nocache,
    gitSha: await resolveGitSha(),
    manifestPath: resolve(cmd.manifestPath ?? join(outDir, 'image-manifest.json')),
    timeoutMs: cmd.timeoutSeconds * 1000,
    docker: new Docker(),
    log,
  });
  for (const img of result.images) {
    const where = img.digest ? `${img.image}@${img.digest}` : (img.imageId ?? '(dry run)');
    log(`${img.recipeId}@${img.recipeVersion} -> ${where}`);
  }
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`recipe-builder: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
