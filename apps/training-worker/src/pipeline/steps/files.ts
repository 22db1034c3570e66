import { chmod, readdir } from 'node:fs/promises';
import { join } from 'node:path';

/** Containers run as uid 1000: what they read must be world-readable (folders 755, files 644). */
export async function makeReadable(dir: string): Promise<void> {
  await chmod(dir, 0o755);
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const full = join(dir, entry.name);
    if (entry.isDirectory()) await makeReadable(full);
    else await chmod(full, 0o644);
  }
}

/** The control folder of a job: beside its dataset folder, mounted read-only at CONTAINER_PATHS.control. */
export function controlDirBeside(datasetDir: string): string {
  return join(datasetDir, '..', 'control');
}
